"""The operator page in the real browser: the overview, suspend, unsuspend and delete;
the page (and its nav link) do not exist for anyone else."""

import pytest

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.clock import utcnow
from appliance.db import open_db

pytestmark = pytest.mark.browser


def test_operator_suspends_unsuspends_and_deletes(live_web, browser, settings):
    db = open_db(settings)
    try:
        operator, ops = accounts.create_user(
            db, "ops@example.com", utcnow(), account_name="Ops", operator=True
        )
        owner, team = accounts.create_user(db, "owner@example.com", utcnow(), account_name="Team")
        tokens = {
            "operator": auth.create_session(db, settings, operator.id, ops.id, utcnow()),
            "owner": auth.create_session(db, settings, owner.id, team.id, utcnow()),
        }
    finally:
        db.close()
    pages = {}
    for who, token in tokens.items():
        context = browser.new_context()
        context.add_cookies([{"name": "session", "value": token, "url": live_web.url}])
        pages[who] = context.new_page()
    page, member_page = pages["operator"], pages["owner"]
    try:
        # Not an operator: no nav link, and the page does not exist.
        member_page.goto(live_web.url + "/knowledge")
        assert member_page.get_by_role("link", name="Admin").count() == 0
        assert member_page.goto(live_web.url + "/admin").status == 404

        page.goto(live_web.url + "/knowledge")
        page.get_by_role("link", name="Admin").click()
        page.get_by_role("heading", name="Admin", exact=True).wait_for()
        for section in ("Accounts", "Inference", "Worker and purges", "Disk"):
            assert page.get_by_role("heading", name=section).count() == 1, section
        assert "Worker NOT running" in page.inner_text("#worker")
        assert "Not answering" in page.inner_text("#inference")

        row = page.locator(f'tr[data-account="{team.id}"]')
        assert "owner@example.com" in row.inner_text()
        row.get_by_role("button", name="Suspend").click()
        page.locator(f'tr[data-account="{team.id}"] .status-failed').wait_for()
        assert "suspended" in page.locator(f'tr[data-account="{team.id}"]').inner_text()
        # The owner's open session is over.
        member_page.goto(live_web.url + "/knowledge")
        assert "/login" in member_page.url

        page.locator(f'tr[data-account="{team.id}"]').get_by_role(
            "button", name="Unsuspend"
        ).click()
        page.locator(f'tr[data-account="{team.id}"] .status-ready').wait_for()

        row = page.locator(f'tr[data-account="{team.id}"]')
        row.get_by_label("erase all its data").check()
        row.get_by_role("button", name="Delete").click()
        page.locator(f'tr[data-account="{team.id}"]').wait_for(state="detached")
        assert page.locator(f'tr[data-account="{ops.id}"]').count() == 1
    finally:
        for p in pages.values():
            p.context.close()
