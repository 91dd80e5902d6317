"""Account deletion: locked at once, erased by the retention task, with a receipt.

``request_deletion`` locks the account in one transaction, each domain through its
service. ``erase_account`` (the retention task's) asks every part of
``appliance.personal`` to erase what it holds, batch by batch, each batch counted in
``account_deletions.progress`` so an interrupted erasure resumes where it stopped; the
last transaction writes the receipt, and a WAL checkpoint follows (docs/privacy.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlite_utils import Database

from appliance import personal, receipts
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import service as billing
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, NotFound
from appliance.ids import new_id
from appliance.instances import service as instances
from appliance.personal import Budget


@dataclass(frozen=True)
class Deletion:
    account_id: str
    requested_at: str
    requested_by: str
    request: str
    notify_email: str | None
    user_ids: list[str]
    progress: dict
    due_at: str
    erased_at: str | None


def _deletion(row: dict) -> Deletion:
    return Deletion(
        **{**row, "user_ids": json.loads(row["user_ids"]), "progress": json.loads(row["progress"])}
    )


def deletion(db: Database, account_id: str) -> Deletion | None:
    row = next(db["account_deletions"].rows_where("account_id = ?", [account_id]), None)
    return _deletion(row) if row else None


def pending(db: Database) -> list[Deletion]:
    rows = db["account_deletions"].rows_where("erased_at is null", order_by="requested_at")
    return [_deletion(row) for row in rows]


def request_deletion(
    db: Database,
    settings: Settings,
    account_id: str,
    *,
    requested_by: str,
    request: str,
    notify_email: str | None,
    now: datetime,
) -> Deletion:
    """Lock the account now; its content is erased by the next retention run.

    Args:
        requested_by: who asked: ``usr_…`` (the owner) or ``operator``.
        request: how, for the receipt (``owner via Settings``, ``operator via CLI``).
        notify_email: where the confirmation goes once erasure is complete.

    Raises:
        NotFound: no such account, or it is already deleted.
    """
    with write_transaction(db):
        found = accounts.account(db, account_id)  # NotFound when missing or deleted
        leaving = [
            m.user_id
            for m in accounts.members(db, found.id)
            if not any(a.id != found.id for a, _ in accounts.accounts_of(db, m.user_id))
            and not accounts.user(db, m.user_id).operator
        ]
        accounts.set_status(db, found.id, "deleted")
        auth.revoke_account_access(db, found.id, now)
        for instance in instances.list_instances(db, found.id):
            instances.set_state(db, found.id, "owner", instance.id, "destroyed", now)
        # Billing stops now: the billing rows are pseudonymized at once (the saved card
        # and the people who paid are cleared), so nothing is charged or sent any more.
        reference = new_id("erased")
        kept = billing.pseudonymize_account(db, found.id, reference)
        progress = {"billing rows (pseudonymized)": kept, f"billing_ref:{reference}": 1}
        due = iso(now + timedelta(days=settings.privacy.erase_window_days))
        requested = Deletion(
            found.id, iso(now), requested_by, request, notify_email, leaving, progress, due, None
        )
        row = {**asdict(requested), "user_ids": json.dumps(leaving)}
        db["account_deletions"].insert({**row, "progress": json.dumps(progress, sort_keys=True)})
    return requested


def erase_account(
    db: Database,
    settings: Settings,
    account_id: str,
    now: datetime,
    *,
    max_batches: int | None = None,
    budget: Budget | None = None,
) -> receipts.Receipt | None:
    """Erase what every part holds of a deleted account; returns the receipt.

    Returns None when ``max_batches`` (or the shared ``budget`` of a purge run) ran out
    first; the next call continues where this one stopped.

    Raises:
        NotFound: no deletion was requested for this account.
        Conflict: it was already erased.
    """
    found = deletion(db, account_id)
    if found is None:
        raise NotFound("No deletion was requested for this account.")
    if found.erased_at:
        raise Conflict("This account has already been erased.")
    # Someone who joined another account since the request keeps their person rows.
    leaving = [u for u in found.user_ids if not accounts.member_elsewhere(db, u, account_id)]
    job = personal.Erasure(
        account_id=account_id,
        user_ids=leaving,
        emails=accounts.emails(db, leaving),  # none left once a resumed run erased them
        batch=settings.privacy.purge_batch_size,
        budget=budget or Budget(max_batches),
        count=partial(_count, db, account_id),
    )
    for part in personal.parts():
        if not part.erase(db, settings, job):
            return None
    leftover = settings.paths.files / account_id  # interrupted uploads
    if leftover.is_dir():
        shutil.rmtree(leftover)
    with write_transaction(db):
        current = deletion(db, account_id)
        assert current is not None
        if current.erased_at:  # another purge (CLI and worker at once) finished first
            raise Conflict("This account has already been erased.")
        accounts.tombstone(db, account_id)
        counts = {k: v for k, v in current.progress.items() if ":" not in k}
        references = [k.split(":", 1)[1] for k in current.progress if k.startswith("billing_ref:")]
        files = [
            {"kind": key.split(":")[1], "sha256": key.split(":")[2]}
            for key in current.progress
            if key.startswith("file:")
        ]
        receipt = receipts.write(
            db, account_id, current.request, counts, files, now, billing_reference=references[0]
        )
        db["account_deletions"].update(account_id, {"erased_at": iso(now)})
    checkpoint(db)
    return receipt


def _count(db: Database, account_id: str, key: str, n: int) -> None:
    """Add to the erasure's progress (inside the batch's transaction)."""
    with write_transaction(db):
        progress = json.loads(db["account_deletions"].get(account_id)["progress"])
        progress[key] = progress.get(key, 0) + n
        db["account_deletions"].update(
            account_id, {"progress": json.dumps(progress, sort_keys=True)}
        )


def checkpoint(db: Database) -> None:
    """Move every page into the main file and truncate the WAL (freed pages were
    overwritten by ``secure_delete``, and FTS5 tables use their secure-delete option)."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def confirmations_due(db: Database) -> list[tuple[str, str, receipts.Receipt]]:
    """(account id, email, receipt) for erased accounts whose owner is not yet told."""
    out = []
    for row in db["account_deletions"].rows_where(
        "erased_at is not null and notify_email is not null"
    ):
        found = receipts.receipts(db, row["account_id"])
        if found:
            out.append((row["account_id"], row["notify_email"], found[-1]))
    return out


def confirmation_sent(db: Database, account_id: str) -> None:
    """Forget the address once the confirmation is queued."""
    with write_transaction(db):
        db["account_deletions"].update(account_id, {"notify_email": None})
