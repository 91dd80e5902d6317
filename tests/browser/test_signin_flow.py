"""The whole first-run journey in the real browser, mail through the real worker."""

import re

import pytest
from conftest import wait_until

from appliance import firstrun, mail
from appliance.db import open_db

pytestmark = pytest.mark.browser
EMAIL = "founder@example.com"


def wait_for_code(settings, count: int) -> str:
    """The code of the ``count``-th sign-in mail to EMAIL, once the worker sent it."""

    def codes():
        found = []
        for message in mail.outbox_messages(settings):
            if message["To"] == EMAIL and "sign-in code" in message["Subject"]:
                text = message.get_body(preferencelist=("plain",)).get_content()
                found.append(re.search(r"^\s*(\d{6})\s*$", text, re.M).group(1))
        return found if len(found) >= count else None

    return wait_until(codes, timeout=30, what="the sign-in mail")[count - 1]


def sign_in(page, base, settings, count):
    page.goto(base + "/login")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Send me a code").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    page.get_by_label("Code").fill(wait_for_code(settings, count))
    page.get_by_role("button", name="Sign in").click()


def test_setup_sign_in_onboarding_sign_out_and_back(live_app, page, settings):
    base = live_app.url
    db = open_db(settings)
    token = firstrun.setup_token(settings, db)
    db.close()

    page.goto(f"{base}/setup?token={token}")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Claim this appliance").click()
    # Claiming signs the operator in: no code needed this once.
    page.get_by_role("heading", name="Tell us about your team").wait_for()
    assert page.url == base + "/onboarding"
    assert "This appliance is yours" in page.inner_text(".flashes")
    page.get_by_label("Business name").fill("Founders & Co")
    page.get_by_label("What will you use it for?").fill("Answering customer questions")
    page.get_by_label("Tone").fill("warm")
    page.get_by_role("button", name="Save").click()
    assert "least" in page.content()  # the age confirmation is required
    page.get_by_label(re.compile("at least 13 years old")).check()
    page.get_by_role("button", name="Save").click()

    page.get_by_role("heading", name=re.compile("team")).first.wait_for()
    assert page.url.rstrip("/") == base
    assert EMAIL in page.content()
    assert "Finish onboarding" not in page.content()

    page.goto(base + "/settings")
    assert "Founders &amp; Co" in page.content() or "Founders & Co" in page.inner_text("body")
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key").inner_text()
    assert secret.startswith("apl_")
    assert "created" in page.inner_text(".flashes")
    # Reloading the page after creating a key creates no second key and hides the secret.
    page.reload()
    assert page.locator("#new-key").count() == 0
    assert page.locator(".flashes").count() == 0
    assert page.locator("#keys tbody tr").count() == 1

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="Sign in").wait_for()
    page.goto(base + "/settings")
    assert "/login" in page.url

    sign_in(page, base, settings, 1)
    page.wait_for_url(base + "/")
    assert EMAIL in page.content()
