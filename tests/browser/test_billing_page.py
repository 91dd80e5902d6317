"""The Billing page in the real browser: top up → the Checkout URL from the local Stripe
stand-in; the usage chart renders."""

import pytest
from billing_support import billed, stripe_standin  # noqa: F401 - fixtures

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import meter, service
from appliance.clock import utcnow
from appliance.db import open_db

pytestmark = pytest.mark.browser


def test_top_up_goes_to_checkout_and_the_chart_renders(billed, stripe_standin, live_web, page):  # noqa: F811
    db = open_db(billed)
    user, account = accounts.create_user(db, "pay@example.com", utcnow(), account_name="Pay")
    token = auth.create_session(db, billed, user.id, account.id, utcnow())
    service.adjust(db, account.id, "3", "welcome credit", utcnow())
    hold = meter.reserve(
        db,
        billed,
        account_id=account.id,
        instance_id=None,
        key_id=None,
        model="tiny",
        prompt_tokens=2000,
        max_completion_tokens=1000,
        now=utcnow(),
    )
    meter.settle(db, billed, hold, prompt_tokens=2000, completion_tokens=1000, now=utcnow())
    db.close()
    page.context.add_cookies([{"name": "session", "value": token, "url": live_web.url}])

    page.goto(live_web.url + "/billing")
    page.get_by_role("heading", name="Billing", exact=True).wait_for()
    chart = page.locator("svg.usage-chart")
    assert chart.is_visible()
    assert chart.locator("rect.bar").count() == 90
    today = chart.locator("rect.bar").last
    assert float(today.get_attribute("height")) > 0
    assert page.locator("#balance-usd").inner_text() == "3.00"

    page.get_by_label("Amount (USD)").fill("42")
    page.get_by_role("button", name="Top up").click()
    page.wait_for_url(f"{stripe_standin.url}/pay/*")
    assert page.get_by_role("heading", name="Pay here").is_visible()
    (session,) = stripe_standin.calls("POST", "/v1/checkout/sessions")
    assert session.params["line_items[0][price_data][unit_amount]"] == "4200"
    assert page.url == f"{stripe_standin.url}/pay/cs_test_1"
