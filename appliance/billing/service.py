"""Billing rules the web and worker use: balance summary, usage reports, spend caps,
operator adjustments, low-balance notices, and pseudonymization for the privacy domain.

Who sees what (docs/billing.md): every member sees the balance and the usage (they are
the ones using it); only owners and admins top up, set spend caps, and see top-ups and
the saved card.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from appliance.accounts.models import MANAGERS
from appliance.billing import ledger, meter, payments
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, NotFound

USAGE_DAYS = 90


def summary(
    db: sqlite_utils.Database, settings: Settings, account_id: str, role: str
) -> dict[str, Any]:
    balance = ledger.balance(db, account_id)
    held = ledger.held(db, account_id)
    enabled = settings.billing.enabled
    prices = meter.prices_for(settings, None)
    data: dict[str, Any] = {
        "balance_microusd": balance,
        "balance_usd": ledger.usd(balance),
        "held_microusd": held,
        "available_microusd": max(0, balance - held),
        "currency": settings.billing.currency,
        "enabled": enabled,
        "out_of_credit": enabled and balance - held <= 0,
        "low_balance": enabled and balance < ledger.micro(settings.billing.low_balance_usd),
        "topups_available": payments.configured(settings),
        "topup_min_usd": settings.billing.topup_min_usd,
        "topup_max_usd": settings.billing.topup_max_usd,
        "prices": {
            "prompt_per_1k_microusd": prices.prompt_per_1k,
            "completion_per_1k_microusd": prices.completion_per_1k,
            "instance_hour_microusd": ledger.micro(settings.billing.price_instance_hour),
            "storage_gb_month_microusd": ledger.micro(settings.billing.price_storage_gb_month),
        },
    }
    if role in MANAGERS:
        row = db.execute(
            "select card_brand, card_last4 from billing_accounts where account_ref = ?",
            [account_id],
        ).fetchone()
        data["saved_card"] = (
            {"brand": row[0], "last4": row[1]} if row and row[0] and row[1] else None
        )
    return data


@dataclass(frozen=True)
class UsageRow:
    key: str
    prompt_tokens: int
    completion_tokens: int
    minutes: int
    cost_microusd: int
    shortfall_microusd: int

    def public(self, name: str) -> dict[str, Any]:
        return {
            name: self.key,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "minutes": self.minutes,
            "cost_microusd": self.cost_microusd,
            "cost_usd": ledger.usd_precise(self.cost_microusd),
        }


_USAGE_KINDS = ("usage", "instance_time", "storage")


def _grouped(db, account_id: str, group: str, since: str) -> list[UsageRow]:
    rows = db.execute(
        f"select {group} as g, coalesce(sum(prompt_tokens), 0), "  # noqa: S608 - fixed names
        "coalesce(sum(completion_tokens), 0), coalesce(sum(minutes), 0), "
        "coalesce(-sum(amount_microusd), 0), coalesce(sum(shortfall_microusd), 0) "
        "from ledger_entries where account_ref = ? and kind in (?, ?, ?) "
        "and created_at >= ? group by g order by g",
        [account_id, *_USAGE_KINDS, since],
    )
    return [UsageRow(row[0] or "", *row[1:]) for row in rows]


def usage(
    db: sqlite_utils.Database, account_id: str, now: datetime, days: int = USAGE_DAYS
) -> dict[str, Any]:
    """Usage of the last ``days`` days: per day (every day, zeros included), per instance,
    per API key. Costs are what was charged (0 while billing is off)."""
    if not 1 <= days <= 366:
        raise InvalidInput("'days' must be between 1 and 366.")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    since = iso(datetime(first.year, first.month, first.day, tzinfo=UTC))
    per_day = {r.key: r for r in _grouped(db, account_id, "substr(created_at, 1, 10)", since)}
    day_rows = []
    for offset in range(days):
        day = (first + timedelta(days=offset)).isoformat()
        row = per_day.get(day) or UsageRow(day, 0, 0, 0, 0, 0)
        day_rows.append(row.public("date"))
    return {
        "since": since,
        "days": day_rows,
        "instances": [
            r.public("instance_id") for r in _grouped(db, account_id, "instance_id", since) if r.key
        ],
        "keys": [r.public("key_id") for r in _grouped(db, account_id, "key_id", since) if r.key],
    }


CSV_COLUMNS = (
    "created_at",
    "kind",
    "amount_usd",
    "amount_microusd",
    "balance_microusd",
    "shortfall_microusd",
    "instance_id",
    "key_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "minutes",
)


def usage_csv(db: sqlite_utils.Database, account_id: str, now: datetime) -> str:
    """Every ledger entry of the last 90 days as CSV (newest first)."""
    first = now.astimezone(UTC) - timedelta(days=USAGE_DAYS)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for entry in ledger.entries(db, account_id, since=iso(first)):
        data = entry.public()
        writer.writerow(["" if data[c] is None else data[c] for c in CSV_COLUMNS])
    return out.getvalue()


def history(db: sqlite_utils.Database, account_id: str, limit: int = 200) -> list[dict]:
    return [e.public() for e in ledger.entries(db, account_id, limit=limit)]


def caps(db: sqlite_utils.Database, account_id: str, now: datetime) -> list[dict[str, Any]]:
    rows = db.execute(
        "select subject, subject_id, monthly_cap_microusd from spend_caps "
        "where account_ref = ? order by subject, subject_id",
        [account_id],
    ).fetchall()
    return [
        {
            "subject": subject,
            "subject_id": subject_id,
            "monthly_cap_microusd": cap,
            "monthly_cap_usd": ledger.usd(cap),
            "spent_this_month_microusd": meter.spent_this_month(
                db, account_id, subject, subject_id, now
            ),
        }
        for subject, subject_id, cap in rows
    ]


def set_cap(
    db: sqlite_utils.Database,
    account_id: str,
    subject: str,
    subject_id: str,
    monthly_usd: Any,
    now: datetime,
) -> None:
    """Set (or with ``None`` remove) the monthly cap of one of the account's instances
    or API keys. The caller checks that the subject belongs to the account."""
    if subject not in ("instance", "key"):
        raise InvalidInput("A cap is set on an 'instance' or a 'key'.")
    with write_transaction(db):
        if monthly_usd is None:
            db.execute(
                "delete from spend_caps where subject = ? and subject_id = ? and account_ref = ?",
                [subject, subject_id, account_id],
            )
            return
        if isinstance(monthly_usd, bool) or not isinstance(monthly_usd, int | float | str):
            raise InvalidInput("'monthly_usd' must be an amount in USD, or null.")
        cap = ledger.micro(monthly_usd)
        if cap < 0:
            raise InvalidInput("'monthly_usd' may not be negative.")
        owner = db.execute(
            "select account_ref from spend_caps where subject = ? and subject_id = ?",
            [subject, subject_id],
        ).fetchone()
        if owner and owner[0] != account_id:
            raise NotFound("Not found.")
        db.execute(
            "insert into spend_caps (subject, subject_id, account_ref, monthly_cap_microusd, "
            "updated_at) values (?, ?, ?, ?, ?) on conflict (subject, subject_id) do update "
            "set monthly_cap_microusd = excluded.monthly_cap_microusd, "
            "updated_at = excluded.updated_at",
            [subject, subject_id, account_id, cap, iso(now)],
        )


def adjust(
    db: sqlite_utils.Database,
    account_id: str,
    amount_usd: Any,
    reason: str,
    now: datetime,
    *,
    actor: str | None = None,
) -> ledger.Entry:
    """An operator's adjustment (credit, or debit down to zero at most), with a reason.

    Raises:
        InvalidInput: no reason, not an amount, or a debit beyond the balance.
    """
    if not reason or not reason.strip():
        raise InvalidInput("An adjustment needs a reason.")
    amount = ledger.micro(amount_usd)
    if amount == 0:
        raise InvalidInput("An adjustment of zero changes nothing.")
    with write_transaction(db):
        if ledger.balance(db, account_id) + amount < 0:
            raise InvalidInput(
                "A debit may not take the balance below zero (it is "
                f"{ledger.usd(ledger.balance(db, account_id))} USD)."
            )
        return ledger.post(
            db, account_id, "adjustment", amount, now, reason=reason.strip(), actor_ref=actor
        )


def low_balance_accounts(db: sqlite_utils.Database, settings: Settings, now: datetime) -> list[str]:
    """Accounts that just fell below ``billing.low_balance_usd`` (each is returned once
    per crossing: the mark is cleared when the balance is back above the threshold)."""
    threshold = ledger.micro(settings.billing.low_balance_usd)
    if not settings.billing.enabled or threshold == 0:
        return []
    with write_transaction(db):
        db.execute(
            "update billing_accounts set low_balance_notified_at = null "
            "where low_balance_notified_at is not null and balance_microusd >= ?",
            [threshold],
        )
        # Only accounts that have had credit at all: a fresh account is not "low".
        rows = db.execute(
            "select account_ref from billing_accounts where balance_microusd < ? "
            "and low_balance_notified_at is null and exists (select 1 from ledger_entries "
            "where ledger_entries.account_ref = billing_accounts.account_ref "
            "and kind in ('topup', 'adjustment') and amount_microusd > 0)",
            [threshold],
        ).fetchall()
        found = [row[0] for row in rows]
        for account_ref in found:
            db.execute(
                "update billing_accounts set low_balance_notified_at = ? where account_ref = ?",
                [iso(now), account_ref],
            )
    return found


def auto_topup_candidates(db: sqlite_utils.Database, settings: Settings) -> list[str]:
    threshold = ledger.micro(settings.billing.auto_topup_threshold_usd)
    if not payments.configured(settings) or threshold == 0:
        return []
    rows = db.execute(
        "select account_ref from billing_accounts where balance_microusd < ? "
        "and payment_method_id is not null",
        [threshold],
    )
    return [row[0] for row in rows]


def pseudonymize_account(db: sqlite_utils.Database, account_id: str, reference: str) -> int:
    """Replace the account id in every billing row with ``reference`` and strip what
    names a person (who asked for a top-up or made an adjustment, the saved card's
    brand and digits), keeping amounts, dates and Stripe ids for the tax-retention period.
    Holds, spend caps and monthly spending counters (no billing record) are deleted;
    instance meters move to the reference, so minutes run before the deletion are charged.
    Returns the number of rows kept under the reference.
    """
    if not reference or reference == account_id:
        raise InvalidInput("The reference must be new and not the account id.")
    with write_transaction(db):
        db.execute("delete from billing_holds where account_ref = ?", [account_id])
        db.execute("delete from spend_caps where account_ref = ?", [account_id])
        db.execute("delete from spend_months where account_ref = ?", [account_id])
        kept = 0
        kept += db.execute(
            "update ledger_entries set account_ref = ?, actor_ref = null where account_ref = ?",
            [reference, account_id],
        ).rowcount
        kept += db.execute(
            "update billing_topups set account_ref = ?, requested_by = null where account_ref = ?",
            [reference, account_id],
        ).rowcount
        # Minutes a just-destroyed instance ran are still charged by the worker, under
        # the reference.
        db.execute(
            "update instance_meter set account_ref = ? where account_ref = ?",
            [reference, account_id],
        )
        kept += db.execute(
            "update stripe_events set account_ref = ? where account_ref = ?",
            [reference, account_id],
        ).rowcount
        kept += db.execute(
            "update billing_accounts set account_ref = ?, card_brand = null, card_last4 = null, "
            "payment_method_id = null, low_balance_notified_at = null where account_ref = ?",
            [reference, account_id],
        ).rowcount
    return kept


def invariant_violations(db: sqlite_utils.Database) -> list[str]:
    """Accounts whose balance is not the sum of their ledger entries (should be none)."""
    rows = db.execute(
        "select b.account_ref from billing_accounts b left join (select account_ref, "
        "sum(amount_microusd) as total from ledger_entries group by account_ref) l "
        "on l.account_ref = b.account_ref where b.balance_microusd != coalesce(l.total, 0)"
    ).fetchall()
    return [row[0] for row in rows]
