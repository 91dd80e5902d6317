"""Metering: reserve before inference, settle after; instance time; storage.

The rules (holds, spend caps, shortfalls, billing off, embeddings under ``EMBEDDINGS``)
are in docs/billing.md, "Metering a request", and on each function below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlite_utils import Database

from appliance.billing import ledger
from appliance.clock import iso, parse
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import ConfigError, PaymentRequired
from appliance.ids import new_id

#: The model name embedding requests are metered under (the ledger's ``model``).
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class Prices:
    """Micro-dollars per 1,000 tokens."""

    prompt_per_1k: int
    completion_per_1k: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-dollars for a request, rounded up to the next micro-dollar."""
        total = prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        return -(-total // 1000)


@dataclass(frozen=True)
class Hold:
    id: str
    account_id: str
    instance_id: str | None
    key_id: str | None
    model: str | None
    amount_microusd: int
    created_at: str
    expires_at: str


def prices_for(settings: Settings, model: str | None) -> Prices:
    """The model's prices from ``billing.model_prices``, else the default ones (for
    ``EMBEDDINGS``: ``billing.price_embedding_per_1k``).

    Raises:
        ConfigError: an entry of ``billing.model_prices`` is malformed.
    """
    for item in settings.billing.model_prices:
        name, sep, pair = item.partition("=")
        prompt, sep2, completion = pair.partition(":")
        if not sep or not sep2:
            raise ConfigError(
                f"billing.model_prices entry {item!r} must be MODEL=PROMPT:COMPLETION"
            )
        if name.strip() == model:
            try:
                return Prices(ledger.micro(prompt.strip()), ledger.micro(completion.strip()))
            except Exception:
                raise ConfigError(f"billing.model_prices entry {item!r}: bad price") from None
    if model == EMBEDDINGS:
        return Prices(ledger.micro(settings.billing.price_embedding_per_1k), 0)
    return Prices(
        ledger.micro(settings.billing.price_prompt_per_1k),
        ledger.micro(settings.billing.price_completion_per_1k),
    )


def _cost(settings: Settings, model: str | None, prompt_tokens: int, completion_tokens: int) -> int:
    """What the tokens cost under the model's prices (0 while billing is off)."""
    if not settings.billing.enabled:
        return 0
    return prices_for(settings, model).cost(prompt_tokens, completion_tokens)


def _cap(db, subject: str, subject_id: str | None) -> int | None:
    if not subject_id:
        return None
    found = db.query(
        "select monthly_cap_microusd from spend_caps where subject = :subject and subject_id = :id",
        {"subject": subject, "id": subject_id},
    )
    row = next(found, None)
    return row["monthly_cap_microusd"] if row else None


def _month(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m")


def spent_this_month(
    db: Database, account_ref: str, subject: str, subject_id: str, now: datetime
) -> int:
    """Micro-dollars of usage charged to the instance or key this calendar month (UTC),
    plus its open holds."""
    params = {"subject": subject, "id": subject_id, "month": _month(now), "ref": account_ref}
    spent = db.query(
        "select spent_microusd from spend_months where subject = :subject "
        "and subject_id = :id and month = :month and account_ref = :ref",
        params,
    )
    holding = db.query(
        "select coalesce(sum(amount_microusd), 0) as held from billing_holds "
        "where account_ref = :ref and state = 'held' and (case :subject "
        "when 'instance' then instance_id else key_id end) = :id",
        params,
    )
    return next(spent, {"spent_microusd": 0})["spent_microusd"] + next(holding)["held"]


def _count_spending(db, hold: Hold, account_ref: str, charged: int, now: datetime) -> None:
    for subject, subject_id in (("instance", hold.instance_id), ("key", hold.key_id)):
        if subject_id and charged:
            db.execute(
                "insert into spend_months (subject, subject_id, month, account_ref, "
                "spent_microusd) values (?, ?, ?, ?, ?) "
                "on conflict (subject, subject_id, month) do update "
                "set spent_microusd = spent_microusd + excluded.spent_microusd",
                [subject, subject_id, _month(now), account_ref, charged],
            )


def reserve(
    db: Database,
    settings: Settings,
    *,
    account_id: str,
    instance_id: str | None,
    key_id: str | None,
    model: str | None,
    prompt_tokens: int,
    max_completion_tokens: int,
    now: datetime,
) -> Hold:
    """Reserve the most the request can cost.

    Raises:
        PaymentRequired: the balance (less open holds) does not cover it, or the instance's
            or key's monthly spend cap is reached.
    """
    amount = _cost(settings, model, prompt_tokens, max_completion_tokens)
    expires = iso(now + timedelta(seconds=settings.billing.hold_timeout_seconds))
    hold = Hold(new_id("hold"), account_id, instance_id, key_id, model, amount, iso(now), expires)
    with write_transaction(db):
        if settings.billing.enabled:
            free = ledger.balance(db, account_id) - ledger.held(db, account_id)
            if amount > free:
                raise PaymentRequired(
                    "Out of credit: your balance does not cover this request. Top up on "
                    "the Billing page."
                )
            for subject, subject_id in (("instance", instance_id), ("key", key_id)):
                cap = _cap(db, subject, subject_id)
                if cap is None:
                    continue
                spent = spent_this_month(db, account_id, subject, subject_id, now)
                if spent >= cap or spent + amount > cap:
                    raise PaymentRequired(
                        f"This {'instance' if subject == 'instance' else 'API key'} has "
                        "reached its monthly spend cap."
                    )
        db.execute(
            "insert into billing_holds (id, account_ref, instance_id, key_id, model, "
            "amount_microusd, state, created_at, expires_at) values (:id, :account_id, "
            ":instance_id, :key_id, :model, :amount_microusd, 'held', :created_at, :expires_at)",
            vars(hold),
        )
    return hold


def settle(
    db: Database,
    settings: Settings,
    hold: Hold,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    now: datetime,
) -> int:
    """Charge the tokens used, write the usage entry and close the hold.

    Returns the micro-dollars charged (0 when billing is off, or when this hold was
    already settled).
    """
    cost = _cost(settings, hold.model, prompt_tokens, completion_tokens)
    with write_transaction(db):
        row = next(db.query("select * from billing_holds where id = :id", {"id": hold.id}), None)
        if row is None or row["state"] == "settled":
            return 0
        account_ref = row["account_ref"]
        # What this request may take: the balance, less what the account's other open
        # requests have reserved (its own hold is part of the balance it may use).
        available = ledger.balance(db, account_ref) - ledger.held(
            db, account_ref, except_hold=hold.id
        )
        charged = min(cost, max(0, available))
        used = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        subject = {"instance_id": hold.instance_id, "key_id": hold.key_id, "model": hold.model}
        ledger.post(
            db, account_ref, "usage", -charged, now, shortfall=cost - charged, **subject, **used
        )
        _count_spending(db, hold, account_ref, charged, now)
        db.execute(
            "update billing_holds set state = 'settled', closed_at = :now where id = :id",
            {"now": iso(now), "id": hold.id},
        )
    return charged


def release(db: Database, hold: Hold, *, now: datetime | None = None) -> None:
    """Close the hold without charging: the request failed or was cancelled before any
    token was produced. (After some tokens, call ``settle`` with what was produced.)"""
    with write_transaction(db):
        db.execute(
            "update billing_holds set state = 'released', closed_at = :at "
            "where id = :id and state = 'held'",
            {"at": iso(now) if now else hold.created_at, "id": hold.id},
        )


#: Closed holds are kept this long (a late settle of an expired hold still finds it),
#: then deleted: the usage entry is the record.
CLOSED_HOLD_DAYS = 2


def expire_holds(db: Database, now: datetime) -> int:
    """Release holds past their timeout (a request that never settled); returns how many.

    A later ``settle`` of such a hold still charges the tokens once (see ``settle``).
    Holds closed more than ``CLOSED_HOLD_DAYS`` ago are deleted."""
    with write_transaction(db):
        cursor = db.execute(
            "update billing_holds set state = 'expired', closed_at = :now "
            "where state = 'held' and expires_at <= :now",
            {"now": iso(now)},
        )
        db["billing_holds"].delete_where(
            "state != 'held' and closed_at < ?", [iso(now - timedelta(days=CLOSED_HOLD_DAYS))]
        )
        return cursor.rowcount


def _meter(db, instance_id: str) -> dict | None:
    return next(db["instance_meter"].rows_where("instance_id = ?", [instance_id]), None)


def _start_meter(db, instance_id: str, account_id: str, since: datetime) -> None:
    db.execute(
        "insert into instance_meter (instance_id, account_ref, running_since, charged_until) "
        "values (:id, :ref, :since, :since) on conflict (instance_id) do update set "
        "running_since = excluded.running_since, charged_until = excluded.charged_until",
        {"id": instance_id, "ref": account_id, "since": iso(since)},
    )


def _whole_minutes(since: str, until: datetime) -> int:
    return max(0, int((until - parse(since)).total_seconds() // 60))


def charge_instance_time(
    db: Database,
    settings: Settings,
    running: list[tuple[str, str, str]],
    now: datetime,
) -> int:
    """Charge instance time up to the last whole minute (the worker, each minute); returns
    the minutes charged.

    Args:
        running: ``(instance_id, account_id, created_at)`` of each instance now running
            (those never started or stopped since creation have no meter yet).

    Idempotent per instance-minute: each meter remembers up to when it was charged, so a
    late run catches up and a repeated run charges nothing. Minutes an instance was
    stopped are never charged: stopping moves the minutes run so far to
    ``pending_minutes`` and ends the meter in the same transaction (see
    ``instance_state_changed``); they are charged here.
    """
    for instance_id, account_id, created_at in running:
        with write_transaction(db):
            if _meter(db, instance_id) is None:
                _start_meter(db, instance_id, account_id, parse(created_at))
    per_hour = ledger.micro(settings.billing.price_instance_hour)
    if not settings.billing.enabled:
        per_hour = 0
    found = db["instance_meter"].rows_where(
        "running_since is not null or pending_minutes > 0", select="instance_id"
    )
    charged = 0
    for instance_id in [row["instance_id"] for row in found]:
        with write_transaction(db):
            meter = _meter(db, instance_id)
            charged_until, total = meter["charged_until"], meter["minutes_total"]
            fresh = _whole_minutes(charged_until, now) if meter["running_since"] else 0
            minutes = meter["pending_minutes"] + fresh
            if minutes <= 0:
                continue
            # Priced on the running total so that rounding per minute never adds up to
            # more (or less) than the hourly price.
            cost = (total + minutes) * per_hour // 60 - total * per_hour // 60
            run = {"instance_id": instance_id, "minutes": minutes, "period": iso(now)}
            ref = meter["account_ref"]
            ledger.post(db, ref, "instance_time", -cost, now, shortfall_ok=True, **run)
            until = iso(parse(charged_until) + timedelta(minutes=fresh))
            changes = {"charged_until": until, "pending_minutes": 0}
            db["instance_meter"].update(instance_id, {**changes, "minutes_total": total + minutes})
            charged += minutes
    return charged


def instance_state_changed(
    db: Database,
    *,
    instance_id: str,
    account_id: str,
    created_at: str,
    old_state: str,
    new_state: str,
    now: datetime,
) -> None:
    """Start or stop the instance's meter; call inside the transaction that changes state.

    Stopping or destroying ends the meter at once: the whole minutes run so far become
    ``pending_minutes`` (charged by the worker's next run), and nothing after counts.
    """
    with write_transaction(db):
        meter = _meter(db, instance_id)
        if old_state == "running" and meter is None:
            _start_meter(db, instance_id, account_id, parse(created_at))
            meter = _meter(db, instance_id)
        running = meter is not None and meter["running_since"] is not None
        if new_state == "running":
            if not running:
                _start_meter(db, instance_id, account_id, now)
            return
        if not running:
            return
        minutes = _whole_minutes(meter["charged_until"], now)
        until = iso(parse(meter["charged_until"]) + timedelta(minutes=minutes))
        pending = meter["pending_minutes"] + minutes
        changes = {"running_since": None, "charged_until": until, "pending_minutes": pending}
        db["instance_meter"].update(instance_id, changes)


def charge_storage(db: Database, settings: Settings, used: dict[str, int], now: datetime) -> int:
    """Charge one day of knowledge storage per account (the worker, daily); returns the
    number of accounts charged. Idempotent per account and day. Nothing is written while
    the price is 0 or billing is off (storage is shown on the Knowledge page)."""
    per_gb_month = ledger.micro(settings.billing.price_storage_gb_month)
    if not settings.billing.enabled or per_gb_month == 0:
        return 0
    day = now.astimezone(UTC).date()
    next_month = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    days_in_month = (next_month - day.replace(day=1)).days
    done = 0
    for account_id, size in used.items():
        if size <= 0:
            continue
        cost = -(-size * per_gb_month // (1_000_000_000 * days_in_month))
        with write_transaction(db):
            exists = db["ledger_entries"].count_where(
                "account_ref = ? and kind = 'storage' and period = ?", [account_id, day.isoformat()]
            )
            if exists:
                continue
            ledger.post(
                db, account_id, "storage", -cost, now, shortfall_ok=True, period=day.isoformat()
            )
            done += 1
    return done
