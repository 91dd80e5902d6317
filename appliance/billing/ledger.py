"""The credit ledger: append-only entries in integer micro-dollars, and the balance.

``billing_accounts.balance_microusd`` is the sum of the account's entries (docs/billing.md,
"The ledger"). Every function that writes expects to run inside
``appliance.db.write_transaction`` together with the read it is based on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from sqlite_utils import Database

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


_COLUMNS = ", ".join(f.name for f in fields(Entry))


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


def ensure_account(db: Database, account_ref: str, now: datetime) -> None:
    db.execute(
        "insert into billing_accounts (account_ref, updated_at) values (:ref, :now) "
        "on conflict (account_ref) do nothing",
        {"ref": account_ref, "now": iso(now)},
    )


def billing_account(db: Database, account_ref: str) -> dict:
    """The account's ``billing_accounts`` row (empty before its first entry)."""
    found = db.query(
        "select * from billing_accounts where account_ref = :ref", {"ref": account_ref}
    )
    return next(found, {})


def balance(db: Database, account_ref: str) -> int:
    return billing_account(db, account_ref).get("balance_microusd", 0)


def held(db: Database, account_ref: str, *, except_hold: str | None = None) -> int:
    """Micro-dollars reserved by the account's open holds."""
    found = db.query(
        "select coalesce(sum(amount_microusd), 0) as held from billing_holds "
        "where account_ref = :ref and state = 'held' and id != :hold",
        {"ref": account_ref, "hold": except_hold or ""},
    )
    return next(found)["held"]


def post(
    db: Database,
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
        new_id("led"), account_ref, kind, amount, current + amount, shortfall, iso(now), **details
    )
    # Written out rather than table.insert: one statement on the metering path (sqlite-utils'
    # table API looks the table up in sqlite_master first).
    db.execute(
        """insert into ledger_entries (id, account_ref, kind, amount_microusd,
               balance_microusd, shortfall_microusd, created_at, instance_id, key_id, model,
               prompt_tokens, completion_tokens, minutes, period, topup_id, stripe_ref, reason,
               actor_ref)
           values (:id, :account_ref, :kind, :amount_microusd, :balance_microusd,
               :shortfall_microusd, :created_at, :instance_id, :key_id, :model, :prompt_tokens,
               :completion_tokens, :minutes, :period, :topup_id, :stripe_ref, :reason,
               :actor_ref)""",
        vars(entry),
    )
    db.execute(
        "update billing_accounts set balance_microusd = :balance, updated_at = :now "
        "where account_ref = :ref",
        {"balance": entry.balance_microusd, "now": iso(now), "ref": account_ref},
    )
    return entry


def entries(
    db: Database,
    account_ref: str,
    *,
    kinds: tuple[str, ...] = KINDS,
    since: str = "",
    limit: int | None = None,
) -> list[Entry]:
    rows = db["ledger_entries"].rows_where(
        "account_ref = ? and kind in (select value from json_each(?)) and created_at >= ?",
        [account_ref, json.dumps(kinds), since],
        select=_COLUMNS,
        order_by="created_at desc, rowid desc",
        limit=limit,
    )
    return [Entry(**row) for row in rows]


def ledger_sum(db: Database, account_ref: str) -> int:
    """The sum of the account's entries (equal to its balance: the invariant)."""
    found = db.query(
        "select coalesce(sum(amount_microusd), 0) as total from ledger_entries "
        "where account_ref = :ref",
        {"ref": account_ref},
    )
    return next(found)["total"]
