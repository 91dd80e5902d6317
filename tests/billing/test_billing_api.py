"""The billing API and page: balance, usage (per day, instance, key), CSV, caps, roles,
and isolation between accounts (another account's user gets 404 on every object)."""

from __future__ import annotations

import csv
import io
import re

import pytest
from billing_support import billed, stripe_standin  # noqa: F401 - fixtures
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import ledger, meter, service
from appliance.instances import service as instances
from appliance.tasks import create_queue
from appliance.web import create_app


@pytest.fixture
def two(billed, db, clock):  # noqa: F811
    """Two accounts with an owner each, account A with an instance, a key and usage."""
    app = create_app(billed, clock=clock, queue=create_queue(billed, immediate=True))
    people = {}
    for name in ("a", "b"):
        owner, account = accounts.create_user(
            db, f"{name}@example.com", clock(), account_name=name.upper()
        )
        _, manage = auth.create_key(
            db, user_id=owner.id, account_id=account.id, name="m", scope="manage", now=clock()
        )
        people[name] = {"account": account, "user": owner, "manage": manage}
    member = accounts.ensure_user(db, "member@example.com", clock())
    accounts.add_member(db, people["a"]["account"].id, member.id, "member", clock())
    _, member_key = auth.create_key(
        db,
        user_id=member.id,
        account_id=people["a"]["account"].id,
        name="mm",
        scope="manage",
        now=clock(),
    )
    a = people["a"]["account"].id
    bot = instances.create(
        db, a, "owner", {"name": "bot"}, models=["tiny"], max_tokens_cap=64, now=clock()
    )
    key, _ = auth.create_key(
        db,
        user_id=people["a"]["user"].id,
        account_id=a,
        name="script",
        scope="inference",
        now=clock(),
    )
    service.adjust(db, a, "2", "welcome credit", clock())
    hold = meter.reserve(
        db,
        billed,
        account_id=a,
        instance_id=bot.id,
        key_id=key.id,
        model="tiny",
        prompt_tokens=1000,
        max_completion_tokens=1000,
        now=clock(),
    )
    meter.settle(db, billed, hold, prompt_tokens=1000, completion_tokens=500, now=clock())
    with TestClient(app) as client:
        yield {
            "client": client,
            "people": people,
            "member_key": member_key,
            "instance": bot,
            "key": key,
            "db": db,
            "clock": clock,
        }


def auth_for(env, who: str) -> dict:
    secret = env["member_key"] if who == "member" else env["people"][who]["manage"]
    return {"Authorization": f"Bearer {secret}"}


def test_balance_usage_and_csv(two):
    client = two["client"]
    summary = client.get("/api/billing", headers=auth_for(two, "a")).json()
    # 1000 prompt tokens at 0.0005 $/1k + 500 completion at 0.0015 $/1k = 1250 µ$
    assert summary["balance_microusd"] == 2_000_000 - 1250
    assert summary["balance_usd"] == "2.00"
    assert summary["enabled"] is True and summary["out_of_credit"] is False
    usage = client.get("/api/billing/usage", headers=auth_for(two, "a")).json()
    assert len(usage["days"]) == 90
    assert usage["days"][-1] == {
        "date": "2026-11-27",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "minutes": 0,
        "cost_microusd": 1250,
        "cost_usd": "0.00125",
    }
    assert [r["instance_id"] for r in usage["instances"]] == [two["instance"].id]
    assert [r["key_id"] for r in usage["keys"]] == [two["key"].id]
    response = client.get("/api/billing/usage.csv", headers=auth_for(two, "a"))
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["kind"] for r in rows] == ["usage", "adjustment"]
    assert rows[0]["amount_microusd"] == "-1250" and rows[0]["key_id"] == two["key"].id
    assert client.get("/api/billing/usage?days=0", headers=auth_for(two, "a")).status_code == 400


def test_members_see_usage_but_not_money_management(two):
    client = two["client"]
    member = auth_for(two, "member")
    assert client.get("/api/billing", headers=member).status_code == 200
    assert client.get("/api/billing/usage", headers=member).status_code == 200
    assert client.get("/api/billing/usage.csv", headers=member).status_code == 200
    for path in ("/api/billing/topups", "/api/billing/ledger", "/api/billing/caps"):
        assert client.get(path, headers=member).status_code == 404, path
    body = {"instance_id": two["instance"].id, "monthly_usd": "1"}
    assert client.put("/api/billing/caps", json=body, headers=member).status_code == 404


def test_caps_over_the_api(two):
    client = two["client"]
    owner = auth_for(two, "a")
    body = {"instance_id": two["instance"].id, "monthly_usd": "0.002"}
    caps = client.put("/api/billing/caps", json=body, headers=owner).json()
    assert caps == [
        {
            "subject": "instance",
            "subject_id": two["instance"].id,
            "monthly_cap_microusd": 2000,
            "monthly_cap_usd": "0.00",
            "spent_this_month_microusd": 1250,
        }
    ]
    bad = client.put("/api/billing/caps", json={"monthly_usd": "1"}, headers=owner)
    assert bad.status_code == 400
    removed = {"instance_id": two["instance"].id, "monthly_usd": None}
    assert client.put("/api/billing/caps", json=removed, headers=owner).json() == []


def test_another_account_gets_404_on_every_billing_object(two, stripe_standin):  # noqa: F811
    client = two["client"]
    a, b = auth_for(two, "a"), auth_for(two, "b")
    created = client.post("/api/billing/checkout", json={"amount_usd": 10}, headers=a)
    topup_id = created.json()["topup"]["id"]
    assert client.get(f"/api/billing/topups/{topup_id}", headers=a).status_code == 200
    assert client.get(f"/api/billing/topups/{topup_id}", headers=b).status_code == 404
    for body in (
        {"instance_id": two["instance"].id, "monthly_usd": "1"},
        {"key_id": two["key"].id, "monthly_usd": "1"},
    ):
        assert client.put("/api/billing/caps", json=body, headers=b).status_code == 404
    # B's own views show none of A's money or usage.
    summary = client.get("/api/billing", headers=b).json()
    assert summary["balance_microusd"] == 0 and summary["saved_card"] is None
    assert client.get("/api/billing/topups", headers=b).json() == []
    assert client.get("/api/billing/ledger", headers=b).json() == []
    assert client.get("/api/billing/caps", headers=b).json() == []
    usage = client.get("/api/billing/usage", headers=b).json()
    assert usage["instances"] == [] and usage["keys"] == []
    assert all(day["cost_microusd"] == 0 for day in usage["days"])
    assert client.get("/api/billing/usage.csv", headers=b).text.count("\n") == 1
    assert ledger.balance(two["db"], two["people"]["a"]["account"].id) > 0


def test_the_page_shows_balance_chart_and_out_of_credit(two, billed, db):  # noqa: F811
    client = two["client"]
    a = two["people"]["a"]
    token = auth.create_session(db, billed, a["user"].id, a["account"].id, two["clock"]())
    client.cookies.set("session", token)
    page = client.get("/billing")
    assert page.status_code == 200
    html = page.text
    assert '<svg class="usage-chart"' in html and html.count('class="bar"') == 90
    assert "2026-11-27: 0.00125 USD" in html
    assert 'id="balance-usd">2.00<' in html
    assert 'action="/billing/checkout"' in html
    assert "bot" in html and "script" in html
    assert 'id="out-of-credit"' not in html
    service.adjust(
        db,
        a["account"].id,
        ledger.usd_precise(-ledger.balance(db, a["account"].id)),
        "x",
        two["clock"](),
    )
    html = client.get("/billing").text
    assert 'id="out-of-credit"' in html and 'href="#top-up"' in html
    assert client.get("/billing/usage.csv").status_code == 200


def test_back_from_checkout_the_page_says_where_the_payment_is(two, billed, db, stripe_standin):  # noqa: F811
    from billing_support import WEBHOOK_SECRET
    from stripe_standin import event, sign

    client = two["client"]
    a = two["people"]["a"]
    created = client.post(
        "/api/billing/checkout", json={"amount_usd": 10}, headers=auth_for(two, "a")
    )
    topup_id = created.json()["topup"]["id"]
    client.cookies.set(
        "session", auth.create_session(db, billed, a["user"].id, a["account"].id, two["clock"]())
    )
    assert "Stripe is confirming the payment" in client.get(f"/billing?topup={topup_id}").text
    paid = {
        "id": "cs_test_1",
        "client_reference_id": topup_id,
        "payment_status": "paid",
        "amount_total": 1000,
        "currency": "usd",
    }
    payload = event("evt_1", "checkout.session.completed", paid)
    response = client.post(
        "/stripe/webhook",
        content=payload,
        headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET)},
    )
    assert response.status_code == 200
    assert "10.00 USD were added" in client.get(f"/billing?topup={topup_id}").text
    assert "were added" not in client.get("/billing?topup=top_not_mine").text


def test_caps_on_the_page(two, billed, db):  # noqa: F811
    client = two["client"]
    a = two["people"]["a"]
    token = auth.create_session(db, billed, a["user"].id, a["account"].id, two["clock"]())
    client.cookies.set("session", token)
    html = client.get("/billing").text
    assert 'id="caps-table"' in html and "instance bot" in html and "key script" in html
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', html).group(1)
    form = {
        "_csrf_token": csrf,
        "subject": "instance",
        "subject_id": two["instance"].id,
        "monthly_usd": "5",
    }
    saved = client.post("/billing/caps", data=form, follow_redirects=False)
    assert saved.status_code in (302, 303), saved.text
    (cap,) = service.caps(db, a["account"].id, two["clock"]())
    assert cap["monthly_cap_microusd"] == 5_000_000 and cap["subject_id"] == two["instance"].id
    assert 'value="5.00"' in client.get("/billing").text
    assert client.post("/billing/caps", data={**form, "monthly_usd": "-1"}).status_code == 400
    # Another account's instance is not found; an empty amount removes the cap.
    b = two["people"]["b"]
    other = instances.create(
        db,
        b["account"].id,
        "owner",
        {"name": "x"},
        models=["tiny"],
        max_tokens_cap=64,
        now=two["clock"](),
    )
    refused = client.post("/billing/caps", data={**form, "subject_id": other.id})
    assert refused.status_code == 404
    client.post("/billing/caps", data={**form, "monthly_usd": ""}, follow_redirects=False)
    assert service.caps(db, a["account"].id, two["clock"]()) == []


def test_the_caps_form_confirms_once_and_a_reload_changes_nothing(two, billed, db):  # noqa: F811
    client = two["client"]
    a = two["people"]["a"]
    client.cookies.set(
        "session", auth.create_session(db, billed, a["user"].id, a["account"].id, two["clock"]())
    )
    token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/billing").text)[1]
    form = {"subject": "instance", "subject_id": two["instance"].id, "_csrf_token": token}
    capped = client.post("/billing/caps", data={**form, "monthly_usd": "5"}, follow_redirects=False)
    assert capped.status_code == 303 and capped.headers["location"] == "/billing#caps"
    assert "Monthly cap set to 5 USD." in client.get("/billing").text
    assert "Monthly cap set" not in client.get("/billing").text
    assert len(service.caps(db, a["account"].id, two["clock"]())) == 1
    removed = client.post("/billing/caps", data={**form, "monthly_usd": ""})
    assert "Monthly cap removed." in removed.text
    assert service.caps(db, a["account"].id, two["clock"]()) == []
