"""The credit ledger: append-only entries in integer micro-dollars, and the balance.

``billing_accounts.balance_microusd`` is the sum of the account's ledger entries, kept in
the same transaction as every entry (and checked by tests); a CHECK constraint keeps it
from ever going below zero. Every function that writes expects to run inside
``appliance.db.write_transaction`` (``BEGIN IMMEDIATE``) together with the read it is
based on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import sqlite_utils

from appliance.clock import iso
from appliance.errors import InvalidInput, PaymentRequired
from appliance.ids import new_id

MICRO = 1_000_000
KINDS = ("topup", "usage", "instance_time", "storage", "refund", "dispute", "adjustment")


@dataclass(frozen=True)
class Entry:
    id: str
    account_ref: str
    kind: str
    amount_microusd: int
    balance_microusd: int
    shortfall_microusd: int
    created_at: str
    instance_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    minutes: int | None = None
    period: str | None = None
    topup_id: str | None = None
    stripe_ref: str | None = None
    reason: str | None = None
    actor_ref: str | None = None

    def public(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.pop("account_ref")
        data.pop("actor_ref")
        data["amount_usd"] = usd_precise(self.amount_microusd)
        return data


COLUMNS = tuple(f.name for f in fields(Entry))
_SELECT = ", ".join(COLUMNS)


def micro(value: float | int | str | Decimal) -> int:
    """USD (a float setting, or text such as "12.34") → micro-dollars, rounded half up."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput("Not an amount of money.") from None
    if not amount.is_finite():
        raise InvalidInput("Not an amount of money.")
    return int((amount * MICRO).to_integral_value(ROUND_HALF_UP))


def usd(microusd: int) -> str:
    """Micro-dollars → "12.34" (cents, rounded half away from zero; "-0.50" for debits)."""
    cents = (Decimal(microusd) / 10_000).to_integral_value(ROUND_HALF_UP)
    return f"{cents / 100:.2f}" if cents else "0.00"


def usd_precise(microusd: int) -> str:
    """Micro-dollars → USD with as many decimals as needed (at most six): usage costs are
    often fractions of a cent."""
    text = f"{Decimal(microusd) / MICRO:.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}" if whole != "-0" or fraction.strip("0") else "0.00"


def ensure_account(db: sqlite_utils.Database, account_ref: str, now: datetime) -> None:
    db.execute(
        "insert into billing_accounts (account_ref, updated_at) values (?, ?) "
        "on conflict (account_ref) do nothing",
        [account_ref, iso(now)],
    )


def balance(db: sqlite_utils.Database, account_ref: str) -> int:
    row = db.execute(
        "select balance_microusd from billing_accounts where account_ref = ?", [account_ref]
    ).fetchone()
    return row[0] if row else 0


def held(db: sqlite_utils.Database, account_ref: str, *, except_hold: str | None = None) -> int:
    """Micro-dollars reserved by the account's open holds."""
    row = db.execute(
        "select coalesce(sum(amount_microusd), 0) from billing_holds "
        "where account_ref = ? and state = 'held' and id != ?",
        [account_ref, except_hold or ""],
    ).fetchone()
    return row[0]


def post(
    db: sqlite_utils.Database,
    account_ref: str,
    kind: str,
    amount: int,
    now: datetime,
    *,
    shortfall_ok: bool = False,
    shortfall: int = 0,
    **details,
) -> Entry:
    """Append one entry and move the balance by ``amount`` (negative: a debit).

    A debit larger than the balance raises ``PaymentRequired``, or with ``shortfall_ok``
    takes the balance to zero and records the part it could not take as
    ``shortfall_microusd`` (instance time, refunds and disputes: things that already
    happened and cannot be refused). ``shortfall`` adds a part the caller already
    decided not to take (a settle beyond the request's share of the balance).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    ensure_account(db, account_ref, now)
    current = balance(db, account_ref)
    if current + amount < 0:
        if not shortfall_ok:
            raise PaymentRequired("Out of credit: top up to continue.")
        shortfall += -(current + amount)
        amount = -current
    entry = Entry(
        id=new_id("led"),
        account_ref=account_ref,
        kind=kind,
        amount_microusd=amount,
        balance_microusd=current + amount,
        shortfall_microusd=shortfall,
        created_at=iso(now),
        **details,
    )
    marks = ", ".join("?" for _ in COLUMNS)
    db.execute(
        f"insert into ledger_entries ({_SELECT}) values ({marks})",  # noqa: S608
        [getattr(entry, c) for c in COLUMNS],
    )
    db.execute(
        "update billing_accounts set balance_microusd = ?, updated_at = ? where account_ref = ?",
        [entry.balance_microusd, iso(now), account_ref],
    )
    return entry


def entries(
    db: sqlite_utils.Database,
    account_ref: str,
    *,
    kinds: tuple[str, ...] = KINDS,
    since: str = "",
    limit: int | None = None,
) -> list[Entry]:
    marks = ", ".join("?" for _ in kinds)
    sql = (
        f"select {_SELECT} from ledger_entries where account_ref = ? "  # noqa: S608
        f"and kind in ({marks}) and created_at >= ? order by created_at desc, rowid desc"
    )
    params: list = [account_ref, *kinds, since]
    if limit is not None:
        sql += " limit ?"
        params.append(limit)
    return [Entry(*row) for row in db.execute(sql, params)]


def ledger_sum(db: sqlite_utils.Database, account_ref: str) -> int:
    """The sum of the account's entries (equal to its balance: the invariant)."""
    return db.execute(
        "select coalesce(sum(amount_microusd), 0) from ledger_entries where account_ref = ?",
        [account_ref],
    ).fetchone()[0]
