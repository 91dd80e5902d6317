"""Retention: the purges that make the policy's time limits true.

Each job deletes what is past its limit in batches (``privacy.purge_batch_size`` rows per
transaction) until nothing is left, so a run after downtime catches up in one go and an
interrupted run loses at most one batch of work: the next run simply finds the rest.
Jobs are idempotent (a second run finds nothing). Every run of every job is recorded in
``purge_runs``; ``doctor`` reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlite_utils

from appliance.clock import iso, parse
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict
from appliance.privacy import erasure, export
from appliance.privacy.erasure import Budget

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


def _log_cutoff(settings: Settings, now: datetime) -> str:
    return iso(now - timedelta(days=settings.privacy.log_retention_days))


def _batched(
    db: sqlite_utils.Database,
    table: str,
    where: str,
    params: list,
    batch: int,
    budget: Budget,
    on_batch=None,
) -> tuple[int, bool]:
    total = 0
    while True:
        if not budget.spend():
            return total, False
        with write_transaction(db):
            deleted = db.execute(
                f"delete from {table} where rowid in "  # noqa: S608 - fixed names
                f"(select rowid from {table} where {where} limit ?)",
                [*params, batch],
            ).rowcount
        total += deleted
        if on_batch:
            on_batch(deleted)
        if deleted < batch:
            return total, True


def purge_request_log(db, settings, now, budget, on_batch):
    return _batched(
        db,
        "request_log",
        "at < ?",
        [_log_cutoff(settings, now)],
        settings.privacy.purge_batch_size,
        budget,
        on_batch,
    )


def purge_auth_events(db, settings, now, budget, on_batch):
    return _batched(
        db,
        "auth_events",
        "at < ?",
        [_log_cutoff(settings, now)],
        settings.privacy.purge_batch_size,
        budget,
        on_batch,
    )


def purge_signin_codes(db, settings, now, budget, on_batch):
    return _batched(
        db,
        "otp_codes",
        "expires_at < ?",
        [iso(now)],
        settings.privacy.purge_batch_size,
        budget,
        on_batch,
    )


def purge_sessions(db, settings, now, budget, on_batch):
    idle = now - timedelta(minutes=settings.auth.session_idle_minutes)
    return _batched(
        db,
        "sessions",
        "expires_at < ? or revoked_at is not null or last_seen_at < ?",
        [iso(now), iso(idle)],
        settings.privacy.purge_batch_size,
        budget,
        on_batch,
    )


def purge_invites(db, settings, now, budget, on_batch):
    return _batched(
        db,
        "invites",
        "expires_at < ? or revoked_at is not null or declined_at is not null",
        [iso(now)],
        settings.privacy.purge_batch_size,
        budget,
        on_batch,
    )


def purge_exports(db, settings, now, budget, on_batch):
    total = 0
    batch = settings.privacy.purge_batch_size
    while True:
        ids = [
            r[0]
            for r in db.execute(
                "select id from exports where expires_at < ? limit ?", [iso(now), batch]
            )
        ]
        if not ids:
            return total, True
        if not budget.spend():
            return total, False
        for export_id in ids:
            export.export_path(settings, export_id).unlink(missing_ok=True)
        with write_transaction(db):
            db.execute(
                "delete from exports where id in (select value from json_each(?))",
                [json.dumps(ids)],
            )
        total += len(ids)
        on_batch(len(ids))


def purge_outbox(db, settings, now, budget, on_batch):
    """Mail the file backend wrote (it holds addresses and codes) past the log retention."""
    outbox = settings.paths.outbox
    if not outbox.is_dir():
        return 0, True
    cutoff = now - timedelta(days=settings.privacy.log_retention_days)
    old = [p for p in sorted(outbox.glob("*.eml")) if _written_at(p) < cutoff]
    batch = settings.privacy.purge_batch_size
    total = 0
    for start in range(0, len(old), batch):
        if not budget.spend():
            return total, False
        for path in old[start : start + batch]:
            path.unlink(missing_ok=True)
        total += len(old[start : start + batch])
        on_batch(len(old[start : start + batch]))
    return total, True


def _written_at(path) -> datetime:
    # The file backend names messages by their UTC time: 20261127T091500123456Z-….eml
    try:
        return datetime.strptime(path.name.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


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


def purge_billing(db, settings, now, budget, on_batch):
    """Pseudonymized billing records (of erased accounts) past
    ``privacy.tax_retention_years``, each by its own date; live accounts' are kept."""
    from appliance.billing import service as billing

    cutoff = iso(years_before(now, settings.privacy.tax_retention_years))
    total = 0
    for table, (ref, at) in billing.billing_tables().items():
        deleted, complete = _batched(
            db,
            table,
            f"{ref} like 'erased\\_%' escape '\\' and {at} < ?",
            [cutoff],
            settings.privacy.purge_batch_size,
            budget,
            on_batch,
        )
        total += deleted
        if not complete:
            return total, False
    return total, True


def years_before(now: datetime, years: int) -> datetime:
    """The same calendar day ``years`` earlier (28 February for a 29th)."""
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


Job = Callable[..., tuple[int, bool]]

JOBS: dict[str, Job] = {
    "request_log": purge_request_log,
    "auth_events": purge_auth_events,
    "signin_codes": purge_signin_codes,
    "sessions": purge_sessions,
    "invites": purge_invites,
    "exports": purge_exports,
    "outbox": purge_outbox,
    "deleted_accounts": purge_deleted_accounts,
    "billing": purge_billing,
}


def run_job(
    db: sqlite_utils.Database,
    settings: Settings,
    name: str,
    now: datetime,
    budget: Budget | None = None,
) -> RunResult:
    budget = budget or Budget(None)
    with write_transaction(db):
        run_id = db.execute(
            "insert into purge_runs (job, started_at) values (?, ?)", [name, iso(now)]
        ).lastrowid

    def on_batch(deleted: int) -> None:
        if deleted:
            with write_transaction(db):
                db.execute(
                    "update purge_runs set deleted = deleted + ? where id = ?", [deleted, run_id]
                )

    try:
        deleted, complete = JOBS[name](db, settings, now, budget, on_batch)
    except Exception:
        with write_transaction(db):
            db.execute(
                "update purge_runs set finished_at = ?, complete = 0 where id = ?",
                [iso(now), run_id],
            )
        raise
    with write_transaction(db):
        db.execute(
            "update purge_runs set finished_at = ?, complete = ? where id = ?",
            [iso(now), int(complete), run_id],
        )
    level = logging.INFO if deleted or not complete else logging.DEBUG
    log.log(level, "purge %s: %d deleted%s", name, deleted, "" if complete else " (unfinished)")
    return RunResult(name, deleted, complete)


def run_all(
    db: sqlite_utils.Database, settings: Settings, now: datetime, *, max_batches: int | None = None
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


def last_runs(db: sqlite_utils.Database) -> list[LastRun]:
    """For each job: its last complete run (or last attempt when none completed)."""
    out = []
    for name in JOBS:
        row = db.execute(
            "select started_at, finished_at, deleted, complete from purge_runs where job = ? "
            "order by complete desc, id desc limit 1",
            [name],
        ).fetchone()
        out.append(LastRun(name, *(row[:3] if row else (None, None, 0)), bool(row and row[3])))
    return out


def overdue(db: sqlite_utils.Database, now: datetime) -> list[str]:
    """Jobs with no complete run within ``OVERDUE``, and deletions past their window."""
    late = [
        run.job
        for run in last_runs(db)
        if not run.complete or not run.finished_at or now - parse(run.finished_at) > OVERDUE
    ]
    late += [f"erasure of {d.account_id}" for d in erasure.pending(db) if parse(d.due_at) < now]
    return late
