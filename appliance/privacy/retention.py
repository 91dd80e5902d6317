"""Retention: the purges that make the policy's time limits true (docs/privacy.md).

This module runs each domain's ``PURGES`` (its part of ``appliance.personal``) and the
erasure of deleted accounts, in batches until nothing is left past its limit, so a run
after downtime catches up and an interrupted one loses at most one batch. Every run is
recorded in ``purge_runs``; ``doctor`` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlite_utils import Database

from appliance import personal
from appliance.clock import iso, parse
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict
from appliance.personal import Budget, Purge
from appliance.privacy import erasure

log = logging.getLogger(__name__)

#: The worker runs the purges hourly (tasks.py); doctor calls a job overdue after three
#: missed runs.
OVERDUE = timedelta(hours=3)


@dataclass(frozen=True)
class RunResult:
    job: str
    deleted: int
    complete: bool
    error: str | None = None


@dataclass(frozen=True)
class LastRun:
    job: str
    started_at: str | None
    finished_at: str | None
    deleted: int
    complete: bool


def purge_deleted_accounts(db, settings, now, budget, on_batch):
    """Erase every account whose deletion was requested (at the next run, so always
    within ``privacy.erase_window_days``)."""
    total = 0
    for found in erasure.pending(db):
        try:
            receipt = erasure.erase_account(db, settings, found.account_id, now, budget=budget)
        except Conflict:
            continue  # a concurrent purge erased it meanwhile
        if receipt is None:
            return total, False
        erased = sum(v for k, v in receipt.body["counts"].items())
        total += erased
        on_batch(erased)
    return total, True


#: Every part's purges (``appliance.personal``), then the erasure of deleted accounts.
JOBS: dict[str, Purge] = {
    **{name: job for part in personal.parts() for name, job in part.PURGES.items()},
    "deleted_accounts": purge_deleted_accounts,
}


def run_job(
    db: Database,
    settings: Settings,
    name: str,
    now: datetime,
    budget: Budget | None = None,
) -> RunResult:
    budget = budget or Budget(None)
    runs = db["purge_runs"]
    with write_transaction(db):
        run_id = runs.insert({"job": name, "started_at": iso(now)}).last_rowid

    def on_batch(deleted: int) -> None:
        if deleted:
            with write_transaction(db):
                runs.update(run_id, {"deleted": runs.get(run_id)["deleted"] + deleted})

    complete = False  # a job that raises is recorded as unfinished
    try:
        deleted, complete = JOBS[name](db, settings, now, budget, on_batch)
    finally:
        with write_transaction(db):
            runs.update(run_id, {"finished_at": iso(now), "complete": int(complete)})
    level = logging.INFO if deleted or not complete else logging.DEBUG
    log.log(level, "purge %s: %d deleted%s", name, deleted, "" if complete else " (unfinished)")
    return RunResult(name, deleted, complete)


def run_all(
    db: Database, settings: Settings, now: datetime, *, max_batches: int | None = None
) -> list[RunResult]:
    """Every job once. ``max_batches`` bounds the whole run (the rest waits for the next)."""
    budget = Budget(max_batches)
    results = []
    for name in JOBS:
        try:
            results.append(run_job(db, settings, name, now, budget))
        except Exception as exc:
            # One failing job (a locked file, a full disk) must not stop the others; it
            # stays unfinished, so doctor reports it and the next run tries again.
            log.exception("purge %s failed", name)
            results.append(RunResult(name, 0, False, error=type(exc).__name__))
    erasure.checkpoint(db)
    return results


def last_runs(db: Database) -> list[LastRun]:
    """For each job: its last complete run (or last attempt when none completed)."""
    out = []
    for name in JOBS:
        found = db["purge_runs"].rows_where(
            "job = ?",
            [name],
            select="started_at, finished_at, deleted, complete",
            order_by="complete desc, id desc",
            limit=1,
        )
        row = next(found, None) or {"started_at": None, "finished_at": None, "deleted": 0}
        out.append(LastRun(name, **{**row, "complete": bool(row.get("complete"))}))
    return out


def overdue(db: Database, now: datetime) -> list[str]:
    """Jobs with no complete run within ``OVERDUE``, and deletions past their window."""
    late = [
        run.job
        for run in last_runs(db)
        if not run.complete or not run.finished_at or now - parse(run.finished_at) > OVERDUE
    ]
    late += [f"erasure of {d.account_id}" for d in erasure.pending(db) if parse(d.due_at) < now]
    return late
