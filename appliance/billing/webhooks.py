"""What Stripe reports: webhook events (verified, each processed once) and reconciliation.

Credits come only from Stripe's word (docs/billing.md, "Top-ups with Stripe"): a paid
Checkout Session's ``amount_total``, never the client's figure, at most once per top-up;
every event id is recorded in ``stripe_events``, so a redelivered event changes nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlite_utils import Database

from appliance.billing import ledger, payments
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_SECONDS = 300
RECONCILE_DAYS = 3


def verify_event(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, if ``signature`` is Stripe's for this raw body (300 s tolerance).

    Raises:
        NotFound: Stripe is not configured (the endpoint does not exist).
        InvalidInput: missing or wrong signature, tampered body, stale timestamp.
    """
    if not payments.configured(settings):
        raise NotFound("Not found.")
    try:
        stripe.Webhook.construct_event(
            payload,
            signature or "",
            settings.stripe.webhook_secret,
            tolerance=WEBHOOK_TOLERANCE_SECONDS,
        )
        event = json.loads(payload)
    except (ValueError, stripe.SignatureVerificationError):
        raise InvalidInput("Invalid Stripe signature.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise InvalidInput("Not a Stripe event.")
    return event


def handle_event(db: Database, settings: Settings, event: dict[str, Any], now: datetime) -> str:
    """Process a verified event once; returns what happened (for the log and tests)."""
    kind = str(event.get("type", ""))
    obj = (event.get("data") or {}).get("object") or {}
    with write_transaction(db):
        if db["stripe_events"].count_where("id = ?", [event["id"]]):
            return "duplicate"
        account_ref, outcome = None, "ignored"
        if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            account_ref, outcome = _credit_session(db, obj, now)
        elif kind == "checkout.session.async_payment_failed":
            account_ref, outcome = _fail_session(db, obj)
        elif kind == "charge.refunded":
            account_ref, outcome = _refund(db, obj, now)
        elif kind == "charge.dispute.created":
            account_ref, outcome = _dispute(db, obj, now)
        row = {"id": event["id"], "type": kind, "account_ref": account_ref, "outcome": outcome}
        db["stripe_events"].insert({**row, "received_at": iso(now)})
    if outcome == "credited" and kind.startswith("checkout.session"):
        payments.save_card(db, settings, account_ref, obj.get("payment_intent"), now)
    return outcome


def _topup_for_session(db, session: dict[str, Any]) -> payments.Topup | None:
    found = payments.topups_where(db, "stripe_session_id = ?", [session.get("id")])
    if not found and session.get("client_reference_id"):
        # The webhook can arrive before start_checkout stored the session id.
        found = payments.topups_where(
            db, "id = ? and stripe_session_id is null", [session["client_reference_id"]]
        )
    return found[0] if found else None


def _credit_session(db, session: dict[str, Any], now: datetime) -> tuple[str | None, str]:
    """Credit a paid Checkout Session once (inside the caller's transaction)."""
    found = _topup_for_session(db, session)
    if found is None:
        return None, "unknown session"
    if session.get("payment_status") != "paid":
        return found.account_ref, "not paid"
    if found.status == "paid":
        return found.account_ref, "already credited"
    if str(session.get("currency", "")).lower() != found.currency:
        return found.account_ref, "wrong currency"
    cents = session.get("amount_total")
    if not isinstance(cents, int) or cents <= 0:
        return found.account_ref, "no amount"
    amount = cents * payments.PER_CENT
    ledger.post(
        db, found.account_ref, "topup", amount, now, topup_id=found.id, stripe_ref=session.get("id")
    )
    payments.set_topup(
        db,
        found.id,
        status="paid",
        paid_at=iso(now),
        amount_microusd=amount,
        stripe_session_id=session.get("id"),
        stripe_payment_intent_id=session.get("payment_intent"),
    )
    if session.get("customer"):
        payments.remember_customer(db, found.account_ref, session["customer"])
    return found.account_ref, "credited"


def _fail_session(db, session: dict[str, Any]) -> tuple[str | None, str]:
    found = _topup_for_session(db, session)
    if found is None:
        return None, "unknown session"
    if found.status == "pending":
        payments.set_topup(db, found.id, status="failed")
    return found.account_ref, "failed"


def _account_for_payment(db, payment_intent: Any, customer: Any) -> str | None:
    for table, where, value in (
        ("billing_topups", "stripe_payment_intent_id = ?", payment_intent),
        ("billing_accounts", "stripe_customer_id = ?", customer),
    ):
        found = db[table].rows_where(where, [value], select="account_ref") if value else ()
        row = next(iter(found), None)
        if row:
            return row["account_ref"]
    return None


def _refund(db, charge: dict[str, Any], now: datetime) -> tuple[str | None, str]:
    """Debit what was refunded. ``amount_refunded`` is cumulative, so only the part not
    debited by an earlier event is taken. If the balance cannot cover it (the credit was
    already spent), the balance goes to zero and the rest is recorded as a shortfall."""
    account_ref = _account_for_payment(db, charge.get("payment_intent"), charge.get("customer"))
    if account_ref is None:
        return None, "unknown charge"
    refunded = charge.get("amount_refunded")
    if not isinstance(refunded, int) or refunded <= 0:
        return account_ref, "no amount"
    before = db.query(
        "select coalesce(sum(-amount_microusd + shortfall_microusd), 0) as debited "
        "from ledger_entries where kind = 'refund' and stripe_ref = :charge",
        {"charge": charge.get("id")},
    )
    due = refunded * payments.PER_CENT - next(before)["debited"]
    if due <= 0:
        return account_ref, "already debited"
    ledger.post(
        db, account_ref, "refund", -due, now, shortfall_ok=True, stripe_ref=charge.get("id")
    )
    return account_ref, "debited"


def _dispute(db, dispute: dict[str, Any], now: datetime) -> tuple[str | None, str]:
    """Debit a disputed amount once per dispute (to zero at most, as for refunds)."""
    account_ref = _account_for_payment(db, dispute.get("payment_intent"), None)
    if account_ref is None:
        return None, "unknown charge"
    amount = dispute.get("amount")
    if not isinstance(amount, int) or amount <= 0:
        return account_ref, "no amount"
    exists = db["ledger_entries"].count_where(
        "kind = 'dispute' and stripe_ref = ?", [dispute.get("id")]
    )
    if exists:
        return account_ref, "already debited"
    due = amount * payments.PER_CENT
    ledger.post(
        db, account_ref, "dispute", -due, now, shortfall_ok=True, stripe_ref=dispute.get("id")
    )
    return account_ref, "debited"


def reconcile(db: Database, settings: Settings, now: datetime) -> int:
    """Credit paid Checkout Sessions of the last days that no webhook reported; returns
    how many were credited. Does nothing when Stripe is not configured."""
    if not payments.configured(settings):
        return 0
    since = int((now - timedelta(days=RECONCILE_DAYS)).timestamp())
    try:
        sessions = payments.client(settings).v1.checkout.sessions.list(
            {"created": {"gte": since}, "limit": 100}
        )
        listed = [s.to_dict() for s in sessions.auto_paging_iter()]
    except stripe.StripeError as exc:
        raise payments.unavailable(exc) from None
    paid = [s for s in listed if s.get("payment_status") == "paid"]
    credited = 0
    for session in paid:
        with write_transaction(db):
            account_ref, outcome = _credit_session(db, session, now)
        if outcome == "credited":
            credited += 1
            log.info("reconciliation credited a top-up that no webhook reported")
            payments.save_card(db, settings, account_ref, session.get("payment_intent"), now)
    return credited
