"""What the persona domain holds about people (``appliance.personal``)."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from appliance import personal
from appliance.config import Settings
from appliance.persona import voice
from appliance.persona.store import PersonaStore
from appliance.personal import DERIVED, ERASE, USERS, Table

TABLES = (
    Table("voice_excerpts", "account_id = :account", None, DERIVED, False),
    Table("voice_samples", "account_id = :account", None, ERASE, True, note="files on disk"),
    Table(
        "system_prompts",
        "account_id = :account",
        f"created_by in {USERS}",
        ERASE,
        True,
        contributed=True,
    ),
    Table("egress_log", "account_id = :account", None, ERASE, True),
)
PURGES: dict[str, personal.Purge] = {}


def export(db: sqlite_utils.Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    """The rows, and the file of each voice sample."""
    held = personal.held(db, TABLES, scope)
    for row in personal.rows(db, TABLES[1], scope):
        path = voice.sample_path(settings, row["account_id"], row["id"])
        name = f"voice_samples/{row['id']}-{personal.safe_name(row['filename'])}"
        held.files.append((name, path))
    return held


def erase(db: sqlite_utils.Database, settings: Settings, job: personal.Erasure) -> bool:
    store = PersonaStore(db)

    def delete_one(row: dict) -> Path:
        store.delete_sample(job.account_id, row["id"])  # its excerpts with it
        return voice.sample_path(settings, job.account_id, row["id"])

    samples = personal.erase_with_files(db, TABLES[1], job, delete_one, kind="voice")
    return samples and personal.erase_tables(db, TABLES[2:], job)
