"""All SQL for system_prompts, egress_log, voice_samples and voice_excerpts."""

from __future__ import annotations

from dataclasses import asdict

import sqlite_utils

from appliance.persona.models import EgressEntry, SystemPrompt, VoiceExcerpt, VoiceSample


class PersonaStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # system prompts
    def latest_prompt(self, account_id: str) -> SystemPrompt | None:
        return next(iter(self.prompts(account_id, 1)), None)

    def prompts(self, account_id: str, limit: int) -> list[SystemPrompt]:
        rows = self.db["system_prompts"].rows_where(
            "account_id = ?", [account_id], order_by="version desc", limit=limit
        )
        return [SystemPrompt(**r) for r in rows]

    def prompt_pair(self, account_id: str, version: int) -> list[SystemPrompt]:
        """Version ``version`` and the one before it (if any), newest first."""
        rows = self.db["system_prompts"].rows_where(
            "account_id = ? and version in (?, ?)",
            [account_id, version, version - 1],
            order_by="version desc",
        )
        return [SystemPrompt(**r) for r in rows]

    def next_version(self, account_id: str) -> int:
        sql = "select coalesce(max(version), 0) + 1 from system_prompts where account_id = ?"
        return int(self.db.execute(sql, [account_id]).fetchone()[0])

    def insert_prompt(self, prompt: SystemPrompt) -> None:
        self.db["system_prompts"].insert(asdict(prompt))

    # egress log
    def insert_egress(self, entry: EgressEntry) -> None:
        self.db["egress_log"].insert(asdict(entry))

    def egress(self, account_id: str, limit: int) -> list[EgressEntry]:
        rows = self.db["egress_log"].rows_where(
            "account_id = ?", [account_id], order_by="at desc, rowid desc", limit=limit
        )
        return [EgressEntry(**r) for r in rows]

    # voice samples
    def samples(self, account_id: str) -> list[VoiceSample]:
        rows = self.db["voice_samples"].rows_where(
            "account_id = ?", [account_id], order_by="created_at, rowid"
        )
        return [VoiceSample(**r) for r in rows]

    def _sample(self, where: str, params: list) -> VoiceSample | None:
        row = next(self.db["voice_samples"].rows_where(where, params), None)
        return VoiceSample(**row) if row else None

    def sample(self, account_id: str, sample_id: str) -> VoiceSample | None:
        return self._sample("account_id = ? and id = ?", [account_id, sample_id])

    def count_samples(self, account_id: str) -> int:
        return self.db["voice_samples"].count_where("account_id = ?", [account_id])

    def sample_by_hash(self, account_id: str, sha256: str) -> VoiceSample | None:
        return self._sample("account_id = ? and sha256 = ?", [account_id, sha256])

    def insert_sample(self, sample: VoiceSample, excerpts: list[VoiceExcerpt]) -> None:
        self.db["voice_samples"].insert(asdict(sample))
        if excerpts:
            self.db["voice_excerpts"].insert_all(asdict(excerpt) for excerpt in excerpts)

    def delete_sample(self, account_id: str, sample_id: str) -> None:
        # Explicit rather than relying on the cascade alone: excerpts and sample go together.
        self.db["voice_excerpts"].delete_where(
            "account_id = ? and sample_id = ?", [account_id, sample_id]
        )
        self.db["voice_samples"].delete_where("account_id = ? and id = ?", [account_id, sample_id])

    def excerpts(self, account_id: str) -> list[VoiceExcerpt]:
        """Every excerpt of the account, by sample age, then position in the sample."""
        rows = self.db.query(
            """select e.* from voice_excerpts e
               join voice_samples s on s.id = e.sample_id
               where e.account_id = :account and s.account_id = :account
               order by s.created_at, s.rowid, e.position""",
            {"account": account_id},
        )
        return [VoiceExcerpt(**r) for r in rows]
