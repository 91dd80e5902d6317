"""Account deletion: locked at once, erased by the retention task, with a receipt.

``request_deletion`` (the owner from Settings → My data, or an operator with
``appliance accounts delete``) locks the account in one transaction: status ``deleted``
(so no session or key works any more, see web/identity.py), sessions and keys revoked,
instances destroyed, billing stopped. ``erase_account`` (run by the retention task, at
its next run and never later than ``privacy.erase_window_days``) then removes every row
the registry lists for the account, batch by batch, each batch in its own transaction and
counted in ``account_deletions.progress``, so an interrupted erasure resumes where it
stopped; files go with their rows, and the departing people's mails leave the outbox
(``mail.forget``). The last transaction overwrites the account's name, writes the
deletion receipt and marks the request done; a WAL checkpoint follows so no erased page
survives in the write-ahead log.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import sqlite_utils

from appliance import mail, receipts
from appliance.accounts import service as accounts
from appliance.billing import service as billing
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, NotFound
from appliance.ids import new_id
from appliance.instances import service as instances
from appliance.privacy.registry import DERIVED, ERASE, TABLES, Table

DELETED_NAME = "deleted account"


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


_COLUMNS = (
    "account_id, requested_at, requested_by, request, notify_email, user_ids, progress, "
    "due_at, erased_at"
)


def _row(row) -> Deletion:
    return Deletion(
        row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), json.loads(row[6]), *row[7:]
    )


def deletion(db: sqlite_utils.Database, account_id: str) -> Deletion | None:
    row = db.execute(
        f"select {_COLUMNS} from account_deletions where account_id = ?",  # noqa: S608
        [account_id],
    ).fetchone()
    return _row(row) if row else None


def pending(db: sqlite_utils.Database) -> list[Deletion]:
    return [
        _row(r)
        for r in db.execute(
            f"select {_COLUMNS} from account_deletions where erased_at is null "  # noqa: S608
            "order by requested_at"
        )
    ]


def request_deletion(
    db: sqlite_utils.Database,
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
        members = accounts.members(db, found.id)
        leaving = [
            m.user_id
            for m in members
            if not any(a.id != found.id for a, _ in accounts.accounts_of(db, m.user_id))
            and not accounts.user(db, m.user_id).operator
        ]
        db.execute("update accounts set status = 'deleted' where id = ?", [found.id])
        db.execute(
            "update sessions set revoked_at = ? where account_id = ? and revoked_at is null",
            [iso(now), found.id],
        )
        db.execute(
            "update api_keys set revoked_at = ? where account_id = ? and revoked_at is null",
            [iso(now), found.id],
        )
        for instance in instances.list_instances(db, found.id):
            instances.set_state(db, found.id, "owner", instance.id, "destroyed", now)
        # Billing stops now: the billing rows are pseudonymized at once (the saved card
        # and the people who paid are cleared), so nothing is charged or sent any more.
        reference = new_id("erased")
        kept = billing.pseudonymize_account(db, found.id, reference)
        progress = {"billing rows (pseudonymized)": kept, f"billing_ref:{reference}": 1}
        due = now + timedelta(days=settings.privacy.erase_window_days)
        db.execute(
            f"insert into account_deletions ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            [
                found.id,
                iso(now),
                requested_by,
                request,
                notify_email,
                json.dumps(leaving),
                json.dumps(progress, sort_keys=True),
                iso(due),
                None,
            ],
        )
    result = deletion(db, account_id)
    assert result is not None
    return result


def _params(deletion: Deletion) -> dict:
    return {"account": deletion.account_id, "users": json.dumps(deletion.user_ids)}


def _condition(table: Table) -> str:
    """The account's rows, and the departing people's own rows in any account, except
    what they contributed to another team (registry ``contributed``): that stays."""
    parts = [table.account, None if table.contributed else table.user]
    return " or ".join(f"({c})" for c in parts if c)


def _exists(db: sqlite_utils.Database, name: str) -> bool:
    return (
        db.execute(
            "select 1 from sqlite_master where name = ? and type = 'table'", [name]
        ).fetchone()
        is not None
    )


def erase_account(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    now: datetime,
    *,
    max_batches: int | None = None,
    budget: Budget | None = None,
) -> receipts.Receipt | None:
    """Erase everything the registry lists for a deleted account; returns the receipt.

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
    batch = settings.privacy.purge_batch_size
    budget = budget or Budget(max_batches)
    # Someone who joined another account since the request keeps their person rows.
    found = replace(found, user_ids=[u for u in found.user_ids if _only_here(db, u, account_id)])
    params = _params(found)
    _forget_mail(db, settings, found)
    for table in TABLES:
        if table.on_delete not in (ERASE, DERIVED) or not _exists(db, table.name):
            continue
        if table.on_delete == DERIVED:
            continue  # erased with the rows they index (by the eraser or a trigger)
        eraser = globals()[table.eraser] if table.eraser else _erase_rows
        if not eraser(db, settings, found, table, params, batch, budget):
            return None
    _sweep_files(settings, account_id)
    with write_transaction(db):
        current = deletion(db, account_id)
        assert current is not None
        if current.erased_at:  # another purge (CLI and worker at once) finished first
            raise Conflict("This account has already been erased.")
        db.execute("update accounts set name = ? where id = ?", [DELETED_NAME, account_id])
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
        db.execute(
            "update account_deletions set erased_at = ? where account_id = ?",
            [iso(now), account_id],
        )
    checkpoint(db)
    return receipt


def _forget_mail(db: sqlite_utils.Database, settings: Settings, found: Deletion) -> None:
    """Take the departing people's mails (addresses, codes) out of the outbox first, while
    their user rows still say who they are."""
    addresses = []
    for user_id in found.user_ids:
        with contextlib.suppress(NotFound):  # a resumed erasure has erased them already
            addresses.append(accounts.user(db, user_id).email)
    removed = mail.forget(settings, addresses)
    if removed:
        with write_transaction(db):
            _count(db, found.account_id, "outbox", removed)


def _only_here(db: sqlite_utils.Database, user_id: str, account_id: str) -> bool:
    return (
        db.execute(
            "select 1 from memberships m join accounts a on a.id = m.account_id "
            "where m.user_id = ? and m.account_id != ? and a.status != 'deleted'",
            [user_id, account_id],
        ).fetchone()
        is None
    )


class Budget:
    """How many batches one run may still do (None: unlimited)."""

    def __init__(self, batches: int | None) -> None:
        self.left = batches

    def spend(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _spend(budget: Budget) -> bool:
    return budget.spend()


def _count(db: sqlite_utils.Database, account_id: str, key: str, n: int) -> None:
    """Add to the erasure's progress (inside the batch's transaction)."""
    row = db.execute(
        "select progress from account_deletions where account_id = ?", [account_id]
    ).fetchone()
    progress = json.loads(row[0])
    progress[key] = progress.get(key, 0) + n
    db.execute(
        "update account_deletions set progress = ? where account_id = ?",
        [json.dumps(progress, sort_keys=True), account_id],
    )


def _erase_rows(db, settings, found: Deletion, table: Table, params, batch, budget) -> bool:
    condition = _condition(table)
    while True:
        if not _spend(budget):
            return False
        with write_transaction(db):
            deleted = db.execute(
                f"delete from {table.name} where rowid in "  # noqa: S608 - registry names
                f"(select rowid from {table.name} where {condition} limit :batch)",
                {**params, "batch": batch},
            ).rowcount
            if deleted:
                _count(db, found.account_id, table.name, deleted)
        if deleted < batch:
            return True


def _erase_with_files(
    db, found: Deletion, table: Table, params, batch, budget, kind: str, delete_one
) -> bool:
    while True:
        rows = db.execute(
            f"select id, sha256 from {table.name} where {_condition(table)} limit :batch",  # noqa: S608
            {**params, "batch": batch},
        ).fetchall()
        if not rows:
            return True
        if not _spend(budget):
            return False
        with write_transaction(db):
            paths = [delete_one(item_id) for item_id, _ in rows]
            _count(db, found.account_id, table.name, len(rows))
            for _, sha in rows:
                _count(db, found.account_id, f"file:{kind}:{sha}", 1)
        # After the commit: a crash in between leaves a file the next run's sweep removes.
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def erase_documents(db, settings, found: Deletion, table, params, batch, budget) -> bool:
    from appliance.knowledge import service as knowledge
    from appliance.knowledge.store import KnowledgeStore

    store = KnowledgeStore(db)

    def delete_one(document_id: str):
        doc = store.document_any(document_id)
        store.delete_document(document_id)  # chunks, FTS rows and vectors with it
        return knowledge.document_path(settings, doc)

    return _erase_with_files(db, found, table, params, batch, budget, "document", delete_one)


def erase_voice_samples(db, settings, found: Deletion, table, params, batch, budget) -> bool:
    from appliance.persona import voice
    from appliance.persona.store import PersonaStore

    store = PersonaStore(db)

    def delete_one(sample_id: str):
        store.delete_sample(found.account_id, sample_id)
        return voice.sample_path(settings, found.account_id, sample_id)

    return _erase_with_files(db, found, table, params, batch, budget, "voice", delete_one)


def erase_exports(db, settings, found: Deletion, table, params, batch, budget) -> bool:
    from appliance.privacy import export

    while True:
        rows = db.execute(
            f"select id from exports where {_condition(table)} limit :batch",  # noqa: S608
            {**params, "batch": batch},
        ).fetchall()
        if not rows:
            return True
        if not _spend(budget):
            return False
        with write_transaction(db):
            db.execute(
                "delete from exports where id in (select value from json_each(?))",
                [json.dumps([r[0] for r in rows])],
            )
            _count(db, found.account_id, "exports", len(rows))
        for (export_id,) in rows:
            export.export_path(settings, export_id).unlink(missing_ok=True)


def _sweep_files(settings: Settings, account_id: str) -> None:
    """Remove whatever is left of the account's directory (interrupted uploads)."""
    root = settings.paths.files / account_id
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()
    root.rmdir()


def checkpoint(db: sqlite_utils.Database) -> None:
    """Move every page into the main file and truncate the WAL (freed pages were
    overwritten by ``secure_delete``, and FTS5 tables use their secure-delete option)."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def confirmations_due(db: sqlite_utils.Database) -> list[tuple[str, str, receipts.Receipt]]:
    """(account id, email, receipt) for erased accounts whose owner is not yet told."""
    out = []
    for account_id, email in db.execute(
        "select account_id, notify_email from account_deletions "
        "where erased_at is not null and notify_email is not null"
    ).fetchall():
        found = receipts.receipts(db, account_id)
        if found:
            out.append((account_id, email, found[-1]))
    return out


def confirmation_sent(db: sqlite_utils.Database, account_id: str) -> None:
    """Forget the address once the confirmation is queued."""
    with write_transaction(db):
        db.execute(
            "update account_deletions set notify_email = null where account_id = ?", [account_id]
        )
