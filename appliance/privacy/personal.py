"""What the privacy domain itself holds about people (``appliance.personal``): the export
ZIPs, policy acceptances, erasure requests; and its purges (the request log, expired
exports)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sqlite_utils import Database

from appliance import personal
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.personal import BY_ACCOUNT, BY_USER, ERASE, KEEP, Table
from appliance.privacy import export as exports

TABLES = (
    Table("exports", BY_ACCOUNT, BY_USER, ERASE, True, note="ZIP files on disk", personal=True),
    Table("policy_acceptances", None, BY_USER, ERASE, True),
    Table(
        "account_deletions",
        BY_ACCOUNT,
        None,
        KEEP,
        False,
        note="the erasure request; its email is cleared once the confirmation is sent",
    ),
)


def export(db: Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    return personal.held(db, TABLES, scope)


def erase(db: Database, settings: Settings, job: personal.Erasure) -> bool:
    def delete_one(row: dict) -> Path:
        db["exports"].delete(row["id"])
        return exports.export_path(settings, row["id"])

    return personal.erase_with_files(db, TABLES[0], job, delete_one) and personal.erase_rows(
        db, TABLES[1], job
    )


def purge_request_log(db, settings: Settings, now: datetime, budget, on_batch):
    """Request log lines past the log retention."""
    cutoff = iso(personal.log_cutoff(settings, now))
    return personal.batched_delete(
        db, "request_log", "at < ?", [cutoff], settings, budget, on_batch
    )


def purge_exports(db, settings: Settings, now: datetime, budget, on_batch):
    """Export ZIPs past their expiry: the file, then the row."""
    total = 0
    batch = settings.privacy.purge_batch_size
    while True:
        found = db["exports"].rows_where("expires_at < ?", [iso(now)], select="id", limit=batch)
        ids = [row["id"] for row in found]
        if not ids:
            return total, True
        if not budget.spend():
            return total, False
        for export_id in ids:
            exports.export_path(settings, export_id).unlink(missing_ok=True)
        with write_transaction(db):
            db["exports"].delete_where("id in (select value from json_each(?))", [json.dumps(ids)])
        total += len(ids)
        on_batch(len(ids))


PURGES: dict[str, personal.Purge] = {"request_log": purge_request_log, "exports": purge_exports}
