"""Stripe with the real ``stripe`` library pointed at a local stand-in that records every
request: Checkout parameters, signed webhooks, reconciliation, automatic top-ups."""

from __future__ import annotations

import threading
import time

import pytest
from billing_support import WEBHOOK_SECRET, billed, stripe_standin  # noqa: F401 - fixtures
from conftest import in_threads, make_settings
from litestar.testing import TestClient
from stripe_standin import event, session_object, sign

from appliance import mail
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import ledger, service, webhooks
from appliance.billing import tasks as billing_tasks
from appliance.instances import service as instances
from appliance.tasks import create_queue
from appliance.web import create_app


@pytest.fixture
def shop(billed, db, clock):  # noqa: F811
    app = create_app(billed, clock=clock, queue=create_queue(billed, immediate=True))
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    member = accounts.ensure_user(db, "member@example.com", clock())
    accounts.add_member(db, account.id, member.id, "member", clock())
    keys = {}
    for who, user in (("owner", owner), ("member", member)):
        _, keys[who] = auth.create_key(
            db, user_id=user.id, account_id=account.id, name=who, scope="manage", now=clock()
        )
    with TestClient(app) as client:
        yield {"app": app, "client": client, "account": account, "keys": keys, "db": db}


def mails_to(settings, to: str) -> int:
    return sum(1 for message in mail.outbox_messages(settings) if message["To"] == to)


def as_(shop, who: str) -> dict:
    return {"Authorization": f"Bearer {shop['keys'][who]}"}


def checkout(shop, amount=25) -> dict:
    response = shop["client"].post(
        "/api/billing/checkout", json={"amount_usd": amount}, headers=as_(shop, "owner")
    )
    assert response.status_code == 201, response.text
    return response.json()


def deliver(shop, payload: bytes, *, secret=WEBHOOK_SECRET, timestamp=None, client=None):
    return (client or shop["client"]).post(
        "/stripe/webhook",
        content=payload,
        headers={
            "Stripe-Signature": sign(payload, secret, timestamp),
            "Content-Type": "application/json",
        },
    )


def balance(shop) -> int:
    return ledger.balance(shop["db"], shop["account"].id)


def invariant(shop) -> None:
    account_id = shop["account"].id
    assert ledger.balance(shop["db"], account_id) == ledger.ledger_sum(shop["db"], account_id)


def test_checkout_session_parameters(shop, stripe_standin):  # noqa: F811
    created = checkout(shop, "25.50")
    topup = created["topup"]
    assert created["url"] == f"{stripe_standin.url}/pay/cs_test_1"
    assert topup["status"] == "pending" and topup["amount_usd"] == "25.50"
    customers = stripe_standin.calls("POST", "/v1/customers")
    assert len(customers) == 1
    assert customers[0].headers["idempotency-key"] == f"customer-{shop['account'].id}"
    (session,) = stripe_standin.calls("POST", "/v1/checkout/sessions")
    assert session.headers["authorization"] == "Bearer sk_test_standin"
    assert session.headers["idempotency-key"] == f"topup-{topup['id']}"
    params = session.params
    assert params["mode"] == "payment"
    assert params["customer"] == "cus_test_1"
    assert params["line_items[0][price_data][unit_amount]"] == "2550"
    assert params["line_items[0][price_data][currency]"] == "usd"
    assert params["line_items[0][quantity]"] == "1"
    assert params["client_reference_id"] == topup["id"]
    assert params["payment_intent_data[setup_future_usage]"] == "off_session"
    # The Customer is created once and reused.
    checkout(shop, 10)
    assert len(stripe_standin.calls("POST", "/v1/customers")) == 1
    assert balance(shop) == 0  # nothing is credited before Stripe says it was paid
    # Every call to Stripe is in the account's egress log (one customer, two sessions).
    egress = (
        shop["db"]
        .execute(
            "select service, purpose, outcome, bytes_sent from egress_log where account_id = ?",
            [shop["account"].id],
        )
        .fetchall()
    )
    assert sorted(row[1] for row in egress) == [
        "create the Stripe customer",
        "start a top-up (Checkout)",
        "start a top-up (Checkout)",
    ]
    assert all(row[0] == "stripe" and row[2] == "ok" and row[3] > 0 for row in egress)


def test_checkout_limits_and_roles(shop, stripe_standin):  # noqa: F811
    client = shop["client"]
    for amount in (1, 5000, "abc", "10.001", None, True):
        response = client.post(
            "/api/billing/checkout", json={"amount_usd": amount}, headers=as_(shop, "owner")
        )
        assert response.status_code == 400, amount
    member = client.post(
        "/api/billing/checkout", json={"amount_usd": 20}, headers=as_(shop, "member")
    )
    assert member.status_code == 404
    assert stripe_standin.calls("POST", "/v1/checkout/sessions") == []


def test_a_paid_session_credits_once_and_saves_the_card(shop, stripe_standin):  # noqa: F811
    topup = checkout(shop)["topup"]
    payload = event("evt_1", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    first = deliver(shop, payload)
    assert first.status_code == 200 and first.json()["outcome"] == "credited"
    again = deliver(shop, payload)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    assert balance(shop) == 25_000_000
    summary = shop["client"].get("/api/billing", headers=as_(shop, "owner")).json()
    assert summary["balance_microusd"] == 25_000_000 and summary["balance_usd"] == "25.00"
    assert summary["saved_card"] == {"brand": "visa", "last4": "4242"}
    assert (
        "saved_card" not in shop["client"].get("/api/billing", headers=as_(shop, "member")).json()
    )
    listed = shop["client"].get("/api/billing/topups", headers=as_(shop, "owner")).json()
    assert [(t["id"], t["status"]) for t in listed] == [(topup["id"], "paid")]
    # The same session reported by a second, different event does not credit again.
    other = event("evt_2", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    assert deliver(shop, other).json()["outcome"] == "already credited"
    assert balance(shop) == 25_000_000
    invariant(shop)


def test_the_same_event_delivered_twice_at_once_credits_once(shop, stripe_standin):  # noqa: F811
    topup = checkout(shop)["topup"]
    payload = event("evt_c", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    barrier = threading.Barrier(2)
    outcomes = []

    # One client, one event loop (like the web service): the two requests run at once.
    # (Two clients entering the app's lifespan from two threads could hang at shutdown.)
    with TestClient(shop["app"]) as client:

        def post() -> None:
            barrier.wait()
            outcomes.append(deliver(shop, payload, client=client).json()["outcome"])

        in_threads([post] * 2)
    assert sorted(outcomes) == ["credited", "duplicate"]
    assert balance(shop) == 25_000_000
    invariant(shop)


def test_bad_signatures_are_refused_and_nothing_is_credited(shop, stripe_standin):  # noqa: F811
    topup = checkout(shop)["topup"]
    payload = event("evt_b", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    tampered = payload.replace(b"2500", b"9900")
    signature = sign(payload, WEBHOOK_SECRET)
    client = shop["client"]
    cases = [
        client.post("/stripe/webhook", content=tampered, headers={"Stripe-Signature": signature}),
        deliver(shop, payload, secret="whsec_wrong"),
        deliver(shop, payload, timestamp=int(time.time()) - 301),
        client.post("/stripe/webhook", content=payload),
    ]
    assert [r.status_code for r in cases] == [400, 400, 400, 400]
    assert balance(shop) == 0
    assert shop["db"].execute("select count(*) from stripe_events").fetchone()[0] == 0
    # Within the tolerance it is accepted.
    assert deliver(shop, payload, timestamp=int(time.time()) - 200).status_code == 200
    assert balance(shop) == 25_000_000


def test_unpaid_completed_then_async_payment_succeeded_credits_once(shop, stripe_standin):  # noqa: F811
    topup = checkout(shop)["topup"]
    unpaid = session_object(topup["id"], "cs_test_1", paid=False)
    outcome = deliver(shop, event("evt_u1", "checkout.session.completed", unpaid)).json()
    assert outcome["outcome"] == "not paid" and balance(shop) == 0
    paid = session_object(topup["id"], "cs_test_1")
    kind = "checkout.session.async_payment_succeeded"
    assert deliver(shop, event("evt_u2", kind, paid)).json()["outcome"] == "credited"
    assert deliver(shop, event("evt_u3", kind, paid)).json()["outcome"] == "already credited"
    assert balance(shop) == 25_000_000
    invariant(shop)


def test_refunds_and_disputes_debit_down_to_zero(shop, stripe_standin, clock):  # noqa: F811
    topup = checkout(shop)["topup"]
    deliver(
        shop, event("evt_p", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    )
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": "pi_for_cs_test_1",
        "customer": "cus_test_1",
        "amount": 2500,
        "amount_refunded": 1000,
    }
    assert deliver(shop, event("evt_r1", "charge.refunded", charge)).json()["outcome"] == "debited"
    assert balance(shop) == 15_000_000
    # amount_refunded is cumulative: a second partial refund debits only the difference.
    charge["amount_refunded"] = 1500
    deliver(shop, event("evt_r2", "charge.refunded", charge))
    assert balance(shop) == 10_000_000
    service.adjust(shop["db"], shop["account"].id, "-8", "spent", clock())
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "charge": "ch_1",
        "payment_intent": "pi_for_cs_test_1",
        "amount": 1000,
    }
    assert (
        deliver(shop, event("evt_d1", "charge.dispute.created", dispute)).json()["outcome"]
        == "debited"
    )
    assert deliver(shop, event("evt_d2", "charge.dispute.created", dispute)).json()["outcome"] == (
        "already debited"
    )
    assert balance(shop) == 0
    entry = ledger.entries(shop["db"], shop["account"].id, kinds=("dispute",))[0]
    assert (entry.amount_microusd, entry.shortfall_microusd) == (-2_000_000, 8_000_000)
    invariant(shop)


def test_reconciliation_credits_a_session_no_webhook_reported(shop, stripe_standin, billed, clock):  # noqa: F811
    topup = checkout(shop)["topup"]
    stripe_standin.listed_sessions = [
        session_object(topup["id"], "cs_test_1"),
        session_object("top_someone_else", "cs_other"),
        session_object(topup["id"], "cs_test_1", paid=False) | {"id": "cs_unpaid"},
    ]
    assert webhooks.reconcile(shop["db"], billed, clock()) == 1
    assert webhooks.reconcile(shop["db"], billed, clock()) == 0
    assert balance(shop) == 25_000_000
    (listing,) = stripe_standin.calls("GET", "/v1/checkout/sessions")[:1]
    assert int(listing.params["created[gte]"]) == int(clock().timestamp()) - 3 * 86400
    # A webhook arriving after reconciliation does not credit again.
    late = event("evt_late", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    assert deliver(shop, late).json()["outcome"] == "already credited"
    invariant(shop)


def test_auto_topup_and_the_low_balance_mail(shop, stripe_standin, billed, clock):  # noqa: F811
    topup = checkout(shop)["topup"]
    deliver(
        shop, event("evt_p", "checkout.session.completed", session_object(topup["id"], "cs_test_1"))
    )
    db, account_id = shop["db"], shop["account"].id
    service.adjust(db, account_id, "-22", "spent", clock())  # 3 USD left, below 5
    queue = create_queue(billed, immediate=True)
    queue.billing_minute()
    queue.billing_minute()
    assert mails_to(billed, "owner@example.com") == 1  # once per crossing
    assert mails_to(billed, "member@example.com") == 0  # members are not billing contacts
    assert stripe_standin.calls("POST", "/v1/payment_intents") == []  # auto top-up is off
    service.adjust(db, account_id, "10", "back above", clock())
    queue.billing_minute()
    service.adjust(db, account_id, "-10", "below again", clock())
    queue.billing_minute()
    assert mails_to(billed, "owner@example.com") == 2

    auto = make_settings(
        billed.paths.data_dir,
        **{"billing.auto_topup_threshold_usd": 5.0, "billing.auto_topup_amount_usd": 20},
    )
    minute = billing_tasks.every_minute(auto, clock(), lambda *args: None, instances.running)
    assert minute["topups"] == 1
    (intent,) = stripe_standin.calls("POST", "/v1/payment_intents")
    assert intent.params["amount"] == "2000" and intent.params["off_session"] == "true"
    assert intent.params["confirm"] == "true" and intent.params["customer"] == "cus_test_1"
    assert intent.params["payment_method"] == "pm_test_card"
    assert intent.headers["idempotency-key"].startswith("topup-top_")
    assert balance(shop) == 23_000_000
    # Above the threshold now: no second charge.
    minute = billing_tasks.every_minute(auto, clock(), lambda *args: None, instances.running)
    assert minute["topups"] == 0
    invariant(shop)


def test_billing_off_makes_no_stripe_request(settings, stripe_standin, db, clock):  # noqa: F811
    from billing_support import billing_config

    (settings.paths.data_dir / "appliance.toml").write_text(
        billing_config(stripe_standin.url, enabled=False)
    )
    off = make_settings(settings.paths.data_dir)
    owner, account = accounts.create_user(db, "o@example.com", clock(), account_name="Off")
    _, key = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="m", scope="manage", now=clock()
    )
    app = create_app(off, clock=clock, queue=create_queue(off, immediate=True))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        summary = client.get("/api/billing").json()
        assert summary["enabled"] is False and summary["topups_available"] is False
        assert client.post("/api/billing/checkout", json={"amount_usd": 20}).status_code == 409
        payload = event("evt_x", "checkout.session.completed", {"id": "cs_1"})
        signed = {"Stripe-Signature": sign(payload, WEBHOOK_SECRET)}
        assert client.post("/stripe/webhook", content=payload, headers=signed).status_code == 404
    assert webhooks.reconcile(db, off, clock()) == 0
    billing_tasks.every_minute(off, clock(), lambda *args: None, instances.running)
    assert stripe_standin.requests == []


def test_the_stripe_secrets_are_never_printed(billed):  # noqa: F811
    assert "sk_test_standin" not in repr(billed)
    assert WEBHOOK_SECRET not in repr(billed)
