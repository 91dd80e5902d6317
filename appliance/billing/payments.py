"""Stripe: Checkout top-ups, saved cards and automatic top-ups (webhooks.py credits them).

Nothing here makes a request to Stripe unless ``billing.enabled`` is on and both Stripe
keys are set (``configured``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe
from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

from appliance.accounts import service as accounts
from appliance.billing import ledger
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound, Unavailable
from appliance.ids import new_id
from appliance.persona import service as persona

log = logging.getLogger(__name__)

#: Micro-dollars per cent (Stripe amounts are in the currency's smallest unit).
PER_CENT = 10_000
#: What a call to Stripe carries: no names, emails or content (PRIVACY.md section 5).
EGRESS_DATA = "account reference, top-up amount and currency, Stripe customer and card ids"


@dataclass(frozen=True)
class Topup:
    id: str
    account_ref: str
    kind: str
    amount_microusd: int
    currency: str
    stripe_customer_id: str | None
    requested_by: str | None
    created_at: str
    status: str = "pending"
    stripe_session_id: str | None = None
    stripe_payment_intent_id: str | None = None
    paid_at: str | None = None

    def public(self) -> dict[str, Any]:
        shown = ("id", "kind", "amount_microusd", "currency", "status", "created_at", "paid_at")
        data = {name: getattr(self, name) for name in shown}
        return {**data, "amount_usd": ledger.usd(self.amount_microusd)}


_TOPUP_COLUMNS = ", ".join(f.name for f in fields(Topup))


def configured(settings: Settings) -> bool:
    """Stripe may be used: billing is on and both keys are set."""
    return bool(
        settings.billing.enabled and settings.stripe.secret_key and settings.stripe.webhook_secret
    )


def client(settings: Settings) -> stripe.StripeClient:
    if not configured(settings):
        raise Conflict("Top-ups are not available: billing or Stripe is not configured.")
    return stripe.StripeClient(
        settings.stripe.secret_key,
        base_addresses={"api": settings.stripe.api_base.rstrip("/")},
        max_network_retries=2,
    )


def unavailable(exc: stripe.StripeError) -> Unavailable:
    # The message may quote the request; log only the class and Stripe's code.
    log.warning("Stripe request failed: %s (%s)", type(exc).__name__, exc.code or "no code")
    return Unavailable("Stripe is not answering right now. Please try again shortly.")


def topups_where(db, where: str, params: list, limit: int | None = None) -> list[Topup]:
    rows = db["billing_topups"].rows_where(
        where, params, select=_TOPUP_COLUMNS, order_by="created_at desc", limit=limit
    )
    return [Topup(**row) for row in rows]


def topup(db: Database, account_ref: str, topup_id: str) -> Topup:
    found = topups_where(db, "id = ? and account_ref = ?", [topup_id, account_ref])
    if not found:
        raise NotFound("No such top-up.")
    return found[0]


def topups(db: Database, account_ref: str, limit: int = 100) -> list[Topup]:
    return topups_where(db, "account_ref = ?", [account_ref], limit)


def set_topup(db, topup_id: str, **changes: Any) -> None:
    db["billing_topups"].update(topup_id, changes)


def remember_customer(db, account_ref: str, customer_id: str) -> None:
    db.execute(
        "update billing_accounts set stripe_customer_id = coalesce(stripe_customer_id, :id) "
        "where account_ref = :ref",
        {"id": customer_id, "ref": account_ref},
    )


def parse_amount(settings: Settings, value: Any) -> int:
    """``amount_usd`` from the client → micro-dollars, within the top-up limits.

    Raises:
        InvalidInput: not a number with at most two decimals, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput("'amount_usd' must be an amount in USD, e.g. 20 or \"20.00\".")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput("'amount_usd' must be an amount in USD, e.g. 20.") from None
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise InvalidInput("'amount_usd' may have at most two decimals.")
    low, high = settings.billing.topup_min_usd, settings.billing.topup_max_usd
    if not low <= amount <= high:
        raise InvalidInput(f"A top-up must be between {low} and {high} USD.")
    return ledger.micro(amount)


def _egress(db, account_ref: str, purpose: str, params: dict, outcome: str, now) -> None:
    """Record a call to Stripe in the account's egress log (PRIVACY.md: every outbound
    connection that carries account data is listed). A pseudonymized account has no log."""
    try:
        accounts.account(db, account_ref)
    except NotFound:
        return
    call = {"service": "stripe", "purpose": purpose, "data_categories": EGRESS_DATA}
    size = len(json.dumps(params).encode())
    persona.log_egress(db, account_ref, **call, bytes_sent=size, outcome=outcome, now=now)


def _customer(db, settings: Settings, account_ref: str, now: datetime) -> str:
    """The account's Stripe Customer, created once (the idempotency key makes two
    concurrent first top-ups get the same one)."""
    known = ledger.billing_account(db, account_ref).get("stripe_customer_id")
    if known:
        return known
    params = {"metadata": {"account_ref": account_ref}}
    try:
        customer = client(settings).v1.customers.create(
            params, {"idempotency_key": f"customer-{account_ref}"}
        )
    except stripe.StripeError as exc:
        _egress(db, account_ref, "create the Stripe customer", params, "error", now)
        raise unavailable(exc) from None
    _egress(db, account_ref, "create the Stripe customer", params, "ok", now)
    with write_transaction(db):
        ledger.ensure_account(db, account_ref, now)
        remember_customer(db, account_ref, customer.id)
    return customer.id


def start_checkout(
    db: Database,
    settings: Settings,
    *,
    account_id: str,
    user_id: str,
    amount_usd: Any,
    now: datetime,
) -> tuple[Topup, str]:
    """A pending top-up and the URL of its Stripe Checkout page.

    Raises:
        InvalidInput: a bad amount. Conflict: Stripe is not configured.
        Unavailable: Stripe did not answer.
    """
    amount = parse_amount(settings, amount_usd)
    client(settings)  # Conflict before anything is written when Stripe is off
    customer = _customer(db, settings, account_id, now)
    row = _add_pending_topup(db, settings, account_id, "checkout", amount, customer, user_id, now)
    base = settings.public_url
    params = {
        "mode": "payment",
        "customer": customer,
        "client_reference_id": row.id,
        "metadata": {"topup_id": row.id},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": row.currency,
                    "unit_amount": amount // PER_CENT,
                    "product_data": {"name": "Prepaid credit"},
                },
            }
        ],
        # Keeps the card on the Customer for automatic top-ups; Stripe stores it.
        "payment_intent_data": {"setup_future_usage": "off_session"},
        "success_url": f"{base}/billing?topup={row.id}",
        "cancel_url": f"{base}/billing",
    }
    try:
        session = client(settings).v1.checkout.sessions.create(
            params, {"idempotency_key": f"topup-{row.id}"}
        )
    except stripe.StripeError as exc:
        _egress(db, account_id, "start a top-up (Checkout)", params, "error", now)
        with write_transaction(db):
            set_topup(db, row.id, status="failed")
        raise unavailable(exc) from None
    _egress(db, account_id, "start a top-up (Checkout)", params, "ok", now)
    with write_transaction(db):
        set_topup(db, row.id, stripe_session_id=session.id)
    return topup(db, account_id, row.id), session.url


def _add_pending_topup(db, settings, account_ref, kind, amount, customer, requested_by, now):
    currency = settings.billing.currency
    row = Topup(
        new_id("top"), account_ref, kind, amount, currency, customer, requested_by, iso(now)
    )
    with write_transaction(db):
        ledger.ensure_account(db, account_ref, now)
        db["billing_topups"].insert(asdict(row))
    return row


def save_card(
    db: Database,
    settings: Settings,
    account_ref: str | None,
    payment_intent_id: Any,
    now: datetime,
) -> None:
    """Remember the saved payment method by brand and last four digits only (best effort:
    a failure leaves the previous card shown and never undoes a credit)."""
    if not account_ref or not isinstance(payment_intent_id, str) or not configured(settings):
        return
    try:
        intent = client(settings).v1.payment_intents.retrieve(
            payment_intent_id, {"expand": ["payment_method"]}
        )
    except stripe.StripeError as exc:
        unavailable(exc)
        return
    method = intent.to_dict().get("payment_method")
    card = method.get("card") if isinstance(method, dict) else None
    if not isinstance(card, dict):
        return
    saved = {
        "payment_method_id": method.get("id"),
        "card_brand": str(card.get("brand", "")),
        "card_last4": str(card.get("last4", ""))[-4:],
        "updated_at": iso(now),
    }
    # The row was there when the payment was credited; an erasure may have pseudonymized
    # it since (this runs after a round trip to Stripe), and then there is no card to keep.
    with write_transaction(db), contextlib.suppress(NotFoundError):
        db["billing_accounts"].update(account_ref, saved)


def auto_topup(db: Database, settings: Settings, account_ref: str, now: datetime) -> str:
    """Charge the saved card off-session when the balance is below the auto top-up
    threshold; returns the outcome. At most one automatic top-up per account per hour."""
    threshold = ledger.micro(settings.billing.auto_topup_threshold_usd)
    if not configured(settings) or threshold == 0:
        return "off"
    saved = ledger.billing_account(db, account_ref)
    customer, method = saved.get("stripe_customer_id"), saved.get("payment_method_id")
    if not customer or not method:
        return "no saved card"
    if ledger.balance(db, account_ref) >= threshold:
        return "not needed"
    recent = db["billing_topups"].count_where(
        "account_ref = ? and kind = 'auto' and created_at > ?",
        [account_ref, iso(now - timedelta(hours=1))],
    )
    if recent:
        return "recently tried"
    amount = ledger.micro(settings.billing.auto_topup_amount_usd)
    pending = _add_pending_topup(db, settings, account_ref, "auto", amount, customer, None, now)
    params = {
        "amount": amount // PER_CENT,
        "currency": pending.currency,
        "customer": customer,
        "payment_method": method,
        "off_session": True,
        "confirm": True,
        "metadata": {"topup_id": pending.id},
    }
    try:
        intent = client(settings).v1.payment_intents.create(
            params, {"idempotency_key": f"topup-{pending.id}"}
        )
    except stripe.StripeError as exc:
        _egress(db, account_ref, "automatic top-up", params, "error", now)
        unavailable(exc)
        with write_transaction(db):
            set_topup(db, pending.id, status="failed")
        return "failed"
    _egress(db, account_ref, "automatic top-up", params, "ok", now)
    intent = intent.to_dict()
    with write_transaction(db):
        set_topup(db, pending.id, stripe_payment_intent_id=intent["id"])
        received = intent.get("amount_received")
        if intent.get("status") != "succeeded" or not isinstance(received, int) or received <= 0:
            set_topup(db, pending.id, status="failed")
            return "failed"
        paid = received * PER_CENT
        ledger.post(
            db, account_ref, "topup", paid, now, topup_id=pending.id, stripe_ref=intent["id"]
        )
        set_topup(db, pending.id, status="paid", paid_at=iso(now), amount_microusd=paid)
    return "credited"
