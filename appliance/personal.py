"""Personal data by registration: the protocol each domain implements for its own tables.

A domain whose tables hold account or user data has a *part*, a module listed in ``PARTS``
(by name, so this core module imports no domain) with ``TABLES``, ``export``, ``erase``
and ``PURGES`` (docs/architecture.md, "Personal data by registration").
``appliance.privacy`` runs them and never names a domain's table. The helpers below are
what a part calls for its own tables. ``tests/privacy/test_registry.py`` checks that every
table with a column of ``ACCOUNT_COLUMNS`` is claimed by exactly one part, its owner's.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

from sqlite_utils import Database

from appliance.config import Settings
from appliance.db import write_transaction

#: The parts, in erasure order: what refers to people before the people themselves
#: (mail first, while the departing people's addresses are known; accounts last).
PARTS = (
    "appliance.mail",
    "appliance.chat.personal",
    "appliance.knowledge.personal",
    "appliance.persona.personal",
    "appliance.privacy.personal",
    "appliance.instances.personal",
    "appliance.auth.personal",
    "appliance.firstrun",
    "appliance.billing.personal",
    "appliance.receipts",
    "appliance.accounts.personal",
)

#: Column names that tie a row to an account or a person.
ACCOUNT_COLUMNS = frozenset(
    {
        "account_id",
        "user_id",
        "email",
        "uploaded_by",
        "created_by",
        "invited_by",
        "requested_by",
        "notify_email",
        "account_ref",
        "actor_ref",
    }
)

ERASE = "erase"  # rows deleted when the account is erased
PSEUDONYMIZE = "pseudonymize"  # kept for the tax period without anything identifying
TOMBSTONE = "tombstone"  # the row stays, every identifying value overwritten
DERIVED = "derived"  # an index of another table's rows, erased with them (FTS, vectors)
KEEP = "keep"  # no content; the record of the erasure itself

#: For conditions: the people concerned (``:users``, user ids) and their addresses
#: (``:emails``), both JSON arrays bound as parameters.
USERS = "(select value from json_each(:users))"
EMAILS = "(select value from json_each(:emails))"
#: The usual conditions: the rows of the account (``account_id``), and of the people.
BY_ACCOUNT = "account_id = :account"
BY_USER = f"user_id in {USERS}"


@dataclass(frozen=True)
class Table:
    """How one table's rows are found, exported and deleted.

    Conditions are SQL over the table's own columns (and its own domain's tables) with
    bound parameters only: ``:account``, ``:users``, ``:emails``. They never contain
    user input.

    Attributes:
        account: condition selecting the account's rows (``None``: not by account).
        user: condition selecting one person's own rows, for a member's export and for
            erasing the people who leave with the account.
        on_delete: ``ERASE``, ``PSEUDONYMIZE``, ``TOMBSTONE``, ``DERIVED`` or ``KEEP``.
        export: whether its rows go into the export ZIP.
        hidden: columns never exported (secret hashes).
        personal: the rows belong to the person ``user`` selects, not to the team (their
            conversations, their exports): only that person's export holds them; an
            owner's export counts the other members' rows (docs/privacy.md).
        contributed: the rows are what a person gave a team (documents they uploaded,
            prompts they wrote). Erasing that person's own account leaves the ones in
            other teams' accounts there, attributed to nobody (the column is set null
            with the user row): erasure takes ``user`` rows only from other tables.
    """

    name: str
    account: str | None
    user: str | None
    on_delete: str
    export: bool
    hidden: tuple[str, ...] = ()
    note: str = ""
    personal: bool = False
    contributed: bool = False


def parts() -> list[ModuleType]:
    return [importlib.import_module(name) for name in PARTS]


def tables() -> list[Table]:
    """Every registered table, in erasure order."""
    return [table for part in parts() for table in part.TABLES]


def _params(account_id: str, user_ids: list[str], emails: list[str]) -> dict:
    return {"account": account_id, "users": json.dumps(user_ids), "emails": json.dumps(emails)}


def _any(*conditions: str | None) -> str | None:
    found = [c for c in conditions if c]
    return " or ".join(f"({c})" for c in found) if found else None


# -- export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Whose data an export holds: one person's, and for an owner the account's."""

    account_id: str
    user_id: str
    email: str
    owner: bool

    @property
    def params(self) -> dict:
        return _params(self.account_id, [self.user_id], [self.email])

    def condition(self, table: Table) -> str | None:
        return _any(table.user, table.account if self.owner and not table.personal else None)


@dataclass
class Held:
    """What one part gives an export; rows and texts are read when they are written, so
    a large account's export never holds its content in memory."""

    tables: dict[str, Callable[[], Iterator[dict]]] = field(default_factory=dict)
    files: list[tuple[str, Path]] = field(default_factory=list)  # (name in the ZIP, path)
    texts: list[tuple[str, Callable[[], str]]] = field(default_factory=list)
    others: dict[str, int] = field(default_factory=dict)  # an owner's: other members' rows


def rows(db: Database, table: Table, scope: Scope) -> Iterator[dict]:
    """The table's rows an export of ``scope`` holds, secret columns left out."""
    condition = scope.condition(table)
    if condition is None:
        return
    for row in db[table.name].rows_where(condition, scope.params):
        yield {k: v for k, v in row.items() if k not in table.hidden}


def held(db: Database, own: tuple[Table, ...], scope: Scope) -> Held:
    """The exported tables of ``own`` for ``scope``; for an owner, the other members'
    personal rows as counts."""
    out = Held()
    for table in own:
        if not table.export:
            continue
        out.tables[table.name] = functools.partial(rows, db, table, scope)
        if scope.owner and table.personal and table.account and table.user:
            others = f"({table.account}) and not ({table.user})"
            out.others[table.name] = db[table.name].count_where(others, scope.params)
    return out


def plain(own: tuple[Table, ...]) -> tuple[Callable, Callable]:
    """``export`` and ``erase`` for a part whose tables need nothing but their rows: the
    exported tables' rows; the ``ERASE`` tables' rows, in order."""

    def export(db: Database, settings: Settings, scope: Scope) -> Held:
        return held(db, own, scope)

    def erase(db: Database, settings: Settings, job: Erasure) -> bool:
        return erase_tables(db, own, job)

    return export, erase


def safe_name(name: str) -> str:
    """A file name as it may appear in the ZIP."""
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip(". ")
    return cleaned[:120] or "file"


# -- erasure ----------------------------------------------------------------------------


@dataclass
class Budget:
    """How many batches one run may still do (None: unlimited)."""

    left: int | None

    def spend(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class Erasure:
    """One run of an account's erasure: who leaves with it, and the run's limits.

    Attributes:
        user_ids: the people who leave with the account (members of no other one).
        emails: their addresses, for rows kept by address (sign-in codes, mail).
        batch: rows per transaction (``privacy.purge_batch_size``).
        count: ``count(key, n)`` adds to the erasure's progress (the receipt's counts);
            call it inside the batch's transaction.
    """

    account_id: str
    user_ids: list[str]
    emails: list[str]
    batch: int
    budget: Budget
    count: Callable[[str, int], None]

    @property
    def params(self) -> dict:
        return _params(self.account_id, self.user_ids, self.emails)

    def condition(self, table: Table) -> str:
        """The account's rows, and the departing people's own rows in any account, except
        what they contributed to another team (``contributed``): that stays."""
        return _any(table.account, None if table.contributed else table.user) or "0"


def _delete_batch(db: Database, table: str, where: str, params, batch: int) -> int:
    """Delete up to ``batch`` of the rows ``where`` selects, in the caller's transaction."""
    # "as": a table whose integer primary key is an alias of rowid names it after itself.
    selected = db[table].rows_where(where, params, select="rowid as row_id", limit=batch)
    found = [row["row_id"] for row in selected]
    if found:
        db[table].delete_where("rowid in (select value from json_each(?))", [json.dumps(found)])
    return len(found)


def erase_rows(db: Database, table: Table, job: Erasure) -> bool:
    """Delete the job's rows of one table, batch by batch; False when the budget ran out."""
    condition = job.condition(table)
    while True:
        if not job.budget.spend():
            return False
        with write_transaction(db):
            deleted = _delete_batch(db, table.name, condition, job.params, job.batch)
            if deleted:
                job.count(table.name, deleted)
        if deleted < job.batch:
            return True


def erase_tables(db: Database, own: tuple[Table, ...], job: Erasure) -> bool:
    """``erase_rows`` for each ``ERASE`` table of ``own``, in order."""
    return all(erase_rows(db, t, job) for t in own if t.on_delete == ERASE)


def erase_with_files(
    db: Database,
    table: Table,
    job: Erasure,
    delete_one: Callable[[dict], Path],
    *,
    kind: str | None = None,
) -> bool:
    """Erase rows that each have a file: ``delete_one(row)`` deletes a row (``id``,
    ``sha256``) and its index rows and returns its file, removed after the commit (a
    crash in between leaves a file the erasure's sweep of the account directory
    removes). With ``kind``, each file's hash goes into the receipt."""
    where = job.condition(table)
    while True:
        page = db[table.name].rows_where(where, job.params, select="id, sha256", limit=job.batch)
        found = list(page)
        if not found:
            return True
        if not job.budget.spend():
            return False
        with write_transaction(db):
            paths = [delete_one(row) for row in found]
            job.count(table.name, len(found))
            for row in found if kind else ():
                job.count(f"file:{kind}:{row['sha256']}", 1)
        for path in paths:
            path.unlink(missing_ok=True)


# -- retention --------------------------------------------------------------------------

#: ``purge(db, settings, now, budget, on_batch) -> (deleted, complete)``; ``on_batch(n)``
#: is called after each committed batch.
Purge = Callable[[Database, Settings, datetime, Budget, Callable[[int], None]], tuple[int, bool]]


def batched_delete(
    db: Database,
    table: str,
    where: str,
    params: list,
    settings: Settings,
    budget: Budget,
    on_batch: Callable[[int], None],
) -> tuple[int, bool]:
    """Delete a part's own rows matching ``where``, ``privacy.purge_batch_size`` per
    transaction, until none is left or the budget runs out."""
    batch = settings.privacy.purge_batch_size
    total = 0
    while True:
        if not budget.spend():
            return total, False
        with write_transaction(db):
            deleted = _delete_batch(db, table, where, params, batch)
        total += deleted
        on_batch(deleted)
        if deleted < batch:
            return total, True


def log_cutoff(settings: Settings, now: datetime) -> datetime:
    """Logs older than this are past ``privacy.log_retention_days``."""
    return now - timedelta(days=settings.privacy.log_retention_days)
