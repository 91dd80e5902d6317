"""The real server in the real browser: home page and first-run setup."""

import pytest

from appliance import firstrun
from appliance.db import open_db

pytestmark = pytest.mark.browser


def test_home_page(live_web, page):
    page.goto(live_web.url + "/")
    assert page.title().endswith("Private AI")
    assert page.get_by_role("heading", name="Finish setting up").is_visible()


def test_setup_flow(live_web, page, settings):
    db = open_db(settings)
    token = firstrun.setup_token(settings, db)
    page.goto(f"{live_web.url}/setup?token={token}")
    page.get_by_label("Email address").fill("owner@example.com")
    page.get_by_role("button", name="Claim this appliance").click()
    page.get_by_role("heading", name="Tell us about your team").wait_for()
    assert "owner@example.com" in page.inner_text(".flashes")
    assert db.execute("select email from setup_claims").fetchall() == [("owner@example.com",)]
    db.close()
    page.goto(f"{live_web.url}/setup?token={token}")
    assert page.get_by_role("heading", name="Not found").is_visible()


def test_bad_setup_token_shows_not_found(live_web, page):
    response = page.goto(f"{live_web.url}/setup?token=nope")
    assert response.status == 404
