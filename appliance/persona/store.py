"""All SQL for system_prompts, egress_log, voice_samples and voice_excerpts."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from appliance.persona.models import EgressEntry, SystemPrompt, VoiceExcerpt, VoiceSample


class PersonaStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def _all(self, sql: str, params: list[Any]) -> list[dict]:
        cursor = self.db.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # system prompts
    def latest_prompt(self, account_id: str) -> SystemPrompt | None:
        rows = self._all(
            "select * from system_prompts where account_id = ? order by version desc limit 1",
            [account_id],
        )
        return SystemPrompt(**rows[0]) if rows else None

    def prompts(self, account_id: str, limit: int) -> list[SystemPrompt]:
        rows = self._all(
            "select * from system_prompts where account_id = ? order by version desc limit ?",
            [account_id, limit],
        )
        return [SystemPrompt(**r) for r in rows]

    def next_version(self, account_id: str) -> int:
        row = self.db.execute(
            "select coalesce(max(version), 0) + 1 from system_prompts where account_id = ?",
            [account_id],
        ).fetchone()
        return int(row[0])

    def insert_prompt(self, prompt: SystemPrompt) -> None:
        self.db.execute(
            """insert into system_prompts
                   (id, account_id, version, text, source, created_at, created_by)
               values (?, ?, ?, ?, ?, ?, ?)""",
            [
                prompt.id,
                prompt.account_id,
                prompt.version,
                prompt.text,
                prompt.source,
                prompt.created_at,
                prompt.created_by,
            ],
        )

    # egress log
    def insert_egress(self, entry: EgressEntry) -> None:
        self.db.execute(
            """insert into egress_log (id, account_id, at, service, purpose, data_categories,
                                       bytes_sent, outcome)
               values (?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                entry.id,
                entry.account_id,
                entry.at,
                entry.service,
                entry.purpose,
                entry.data_categories,
                entry.bytes_sent,
                entry.outcome,
            ],
        )

    def egress(self, account_id: str, limit: int) -> list[EgressEntry]:
        rows = self._all(
            "select * from egress_log where account_id = ? order by at desc, rowid desc limit ?",
            [account_id, limit],
        )
        return [EgressEntry(**r) for r in rows]

    # voice samples
    def samples(self, account_id: str) -> list[VoiceSample]:
        rows = self._all(
            "select * from voice_samples where account_id = ? order by created_at, rowid",
            [account_id],
        )
        return [VoiceSample(**r) for r in rows]

    def sample(self, account_id: str, sample_id: str) -> VoiceSample | None:
        rows = self._all(
            "select * from voice_samples where account_id = ? and id = ?",
            [account_id, sample_id],
        )
        return VoiceSample(**rows[0]) if rows else None

    def count_samples(self, account_id: str) -> int:
        row = self.db.execute(
            "select count(*) from voice_samples where account_id = ?", [account_id]
        ).fetchone()
        return int(row[0])

    def sample_by_hash(self, account_id: str, sha256: str) -> VoiceSample | None:
        rows = self._all(
            "select * from voice_samples where account_id = ? and sha256 = ?",
            [account_id, sha256],
        )
        return VoiceSample(**rows[0]) if rows else None

    def insert_sample(self, sample: VoiceSample, excerpts: list[VoiceExcerpt]) -> None:
        self.db.execute(
            """insert into voice_samples (id, account_id, filename, kind, size, sha256,
                                          created_at)
               values (?, ?, ?, ?, ?, ?, ?)""",
            [
                sample.id,
                sample.account_id,
                sample.filename,
                sample.kind,
                sample.size,
                sample.sha256,
                sample.created_at,
            ],
        )
        for excerpt in excerpts:
            self.db.execute(
                """insert into voice_excerpts (id, sample_id, account_id, text, position)
                   values (?, ?, ?, ?, ?)""",
                [excerpt.id, excerpt.sample_id, excerpt.account_id, excerpt.text, excerpt.position],
            )

    def delete_sample(self, account_id: str, sample_id: str) -> None:
        # Explicit rather than relying on the cascade alone: excerpts and sample go together.
        self.db.execute(
            "delete from voice_excerpts where account_id = ? and sample_id = ?",
            [account_id, sample_id],
        )
        self.db.execute(
            "delete from voice_samples where account_id = ? and id = ?", [account_id, sample_id]
        )

    def excerpts(self, account_id: str) -> list[VoiceExcerpt]:
        """Every excerpt of the account, by sample age, then position in the sample."""
        rows = self._all(
            """select e.* from voice_excerpts e
               join voice_samples s on s.id = e.sample_id
               where e.account_id = ? and s.account_id = ?
               order by s.created_at, s.rowid, e.position""",
            [account_id, account_id],
        )
        return [VoiceExcerpt(**r) for r in rows]
