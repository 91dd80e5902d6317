"""Billing rules the web and worker use: balance summary, usage reports, spend caps,
operator adjustments, low-balance notices, and pseudonymization for the privacy domain.

Who sees what (docs/billing.md): every member sees the balance and the usage (they are
the ones using it); only owners and admins top up, set spend caps, and see top-ups and
the saved card.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from appliance.accounts.models import MANAGERS
from appliance.billing import ledger, meter, payments
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, NotFound

USAGE_DAYS = 90


def summary(db: Database, settings: Settings, account_id: str, role: str) -> dict[str, Any]:
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
        saved = ledger.billing_account(db, account_id)
        brand, last4 = saved.get("card_brand"), saved.get("card_last4")
        data["saved_card"] = {"brand": brand, "last4": last4} if brand and last4 else None
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
        data = {name: self.key, **asdict(self), "cost_usd": ledger.usd_precise(self.cost_microusd)}
        return {k: v for k, v in data.items() if k not in ("key", "shortfall_microusd")}


_USAGE_KINDS = ("usage", "instance_time", "storage")


#: What usage is grouped by: the day, the instance, the API key.
_GROUPS = {"day": "substr(created_at, 1, 10)", "instance": "instance_id", "key": "key_id"}


def _grouped(db, account_id: str, group: str, since: str) -> list[UsageRow]:
    rows = db["ledger_entries"].rows_where(
        "account_ref = ? and kind in (?, ?, ?) and created_at >= ? group by key",
        [account_id, *_USAGE_KINDS, since],
        select=f"coalesce({_GROUPS[group]}, '') as key, "
        "coalesce(sum(prompt_tokens), 0) as prompt_tokens, "
        "coalesce(sum(completion_tokens), 0) as completion_tokens, "
        "coalesce(sum(minutes), 0) as minutes, "
        "coalesce(-sum(amount_microusd), 0) as cost_microusd, "
        "coalesce(sum(shortfall_microusd), 0) as shortfall_microusd",
        order_by="key",
    )
    return [UsageRow(**row) for row in rows]


def usage(db: Database, account_id: str, now: datetime, days: int = USAGE_DAYS) -> dict[str, Any]:
    """Usage of the last ``days`` days: per day (every day, zeros included), per instance,
    per API key. Costs are what was charged (0 while billing is off)."""
    if not 1 <= days <= 366:
        raise InvalidInput("'days' must be between 1 and 366.")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    since = iso(datetime(first.year, first.month, first.day, tzinfo=UTC))
    per_day = {r.key: r for r in _grouped(db, account_id, "day", since)}
    dates = [(first + timedelta(days=offset)).isoformat() for offset in range(days)]
    day_rows = [(per_day.get(d) or UsageRow(d, 0, 0, 0, 0, 0)).public("date") for d in dates]
    return {
        "since": since,
        "days": day_rows,
        "instances": [
            r.public("instance_id") for r in _grouped(db, account_id, "instance", since) if r.key
        ],
        "keys": [r.public("key_id") for r in _grouped(db, account_id, "key", since) if r.key],
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


def usage_csv(db: Database, account_id: str, now: datetime) -> str:
    """Every ledger entry of the last 90 days as CSV (newest first)."""
    first = now.astimezone(UTC) - timedelta(days=USAGE_DAYS)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for entry in ledger.entries(db, account_id, since=iso(first)):
        data = entry.public()
        writer.writerow(["" if data[c] is None else data[c] for c in CSV_COLUMNS])
    return out.getvalue()


def history(db: Database, account_id: str, limit: int = 200) -> list[dict]:
    return [e.public() for e in ledger.entries(db, account_id, limit=limit)]


def caps(db: Database, account_id: str, now: datetime) -> list[dict[str, Any]]:
    rows = db["spend_caps"].rows_where(
        "account_ref = ?",
        [account_id],
        select="subject, subject_id, monthly_cap_microusd",
        order_by="subject, subject_id",
    )
    return [
        {
            **row,
            "monthly_cap_usd": ledger.usd(row["monthly_cap_microusd"]),
            "spent_this_month_microusd": meter.spent_this_month(
                db, account_id, row["subject"], row["subject_id"], now
            ),
        }
        for row in rows
    ]


def set_cap(
    db: Database,
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
            db["spend_caps"].delete_where(
                "subject = ? and subject_id = ? and account_ref = ?",
                [subject, subject_id, account_id],
            )
            return
        if isinstance(monthly_usd, bool) or not isinstance(monthly_usd, int | float | str):
            raise InvalidInput("'monthly_usd' must be an amount in USD, or null.")
        cap = ledger.micro(monthly_usd)
        if cap < 0:
            raise InvalidInput("'monthly_usd' may not be negative.")
        others = db["spend_caps"].count_where(
            "subject = ? and subject_id = ? and account_ref != ?", [subject, subject_id, account_id]
        )
        if others:
            raise NotFound("Not found.")
        row = {"subject": subject, "subject_id": subject_id, "account_ref": account_id}
        changes = {"monthly_cap_microusd": cap, "updated_at": iso(now)}
        db["spend_caps"].upsert({**row, **changes}, pk=("subject", "subject_id"))


def adjust(
    db: Database,
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


def low_balance_accounts(db: Database, settings: Settings, now: datetime) -> list[str]:
    """Accounts that just fell below ``billing.low_balance_usd`` (each is returned once
    per crossing: the mark is cleared when the balance is back above the threshold)."""
    threshold = ledger.micro(settings.billing.low_balance_usd)
    if not settings.billing.enabled or threshold == 0:
        return []
    with write_transaction(db):
        db.execute(
            "update billing_accounts set low_balance_notified_at = null "
            "where low_balance_notified_at is not null and balance_microusd >= :threshold",
            {"threshold": threshold},
        )
        # Only accounts that have had credit at all: a fresh account is not "low".
        found = _refs(
            db,
            "balance_microusd < ? and low_balance_notified_at is null and exists ("
            "select 1 from ledger_entries where ledger_entries.account_ref = "
            "billing_accounts.account_ref and kind in ('topup', 'adjustment') "
            "and amount_microusd > 0)",
            [threshold],
        )
        for account_ref in found:
            db["billing_accounts"].update(account_ref, {"low_balance_notified_at": iso(now)})
    return found


def _refs(db: Database, where: str, params: list) -> list[str]:
    """The account references of the billing accounts ``where`` selects."""
    rows = db["billing_accounts"].rows_where(where, params, select="account_ref")
    return [row["account_ref"] for row in rows]


def auto_topup_candidates(db: Database, settings: Settings) -> list[str]:
    threshold = ledger.micro(settings.billing.auto_topup_threshold_usd)
    if not payments.configured(settings) or threshold == 0:
        return []
    return _refs(db, "balance_microusd < ? and payment_method_id is not null", [threshold])


def pseudonymize_account(db: Database, account_id: str, reference: str) -> int:
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
        for table in ("billing_holds", "spend_caps", "spend_months"):
            db[table].delete_where("account_ref = ?", [account_id])
        params = {"ref": reference, "account": account_id}
        # Minutes a just-destroyed instance ran are still charged by the worker, under
        # the reference.
        db.execute(
            "update instance_meter set account_ref = :ref where account_ref = :account", params
        )
        kept = 0
        for statement in (
            "update ledger_entries set account_ref = :ref, actor_ref = null "
            "where account_ref = :account",
            "update billing_topups set account_ref = :ref, requested_by = null "
            "where account_ref = :account",
            "update stripe_events set account_ref = :ref where account_ref = :account",
            "update billing_accounts set account_ref = :ref, card_brand = null, "
            "card_last4 = null, payment_method_id = null, low_balance_notified_at = null "
            "where account_ref = :account",
        ):
            kept += db.execute(statement, params).rowcount
    return kept


def invariant_violations(db: Database) -> list[str]:
    """Accounts whose balance is not the sum of their ledger entries (should be none)."""
    rows = db.query(
        "select b.account_ref from billing_accounts b left join (select account_ref, "
        "sum(amount_microusd) as total from ledger_entries group by account_ref) l "
        "on l.account_ref = b.account_ref where b.balance_microusd != coalesce(l.total, 0)"
    )
    return [row["account_ref"] for row in rows]
