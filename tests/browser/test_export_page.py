"""The export page follows the export by itself: no "reload this page"."""

from __future__ import annotations

import pytest

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.privacy import export

pytestmark = pytest.mark.browser


def test_export_progress_updates_without_a_reload(live_web, page, settings):
    db = open_db(settings)
    try:
        user, team = accounts.create_user(db, "owner@example.com", utcnow(), account_name="Acme")
        token = auth.create_session(db, settings, user.id, team.id, utcnow())
        page.context.add_cookies([{"name": "session", "value": token, "url": live_web.url}])
        page.goto(live_web.url + "/settings/data")
        page.get_by_role("button", name="Export my data").click()
        # No worker runs here: the export waits in the queue until the test builds it.
        page.wait_for_url(live_web.url + "/settings/data#export")
        assert page.inner_text(".flashes") == "Export started."
        assert "updates by itself" in page.inner_text("#export-status")
        (job,) = db.execute("select id from exports").fetchall()
        export.build(db, settings, job[0], utcnow())
        page.locator("#export-download").wait_for(timeout=10_000)
        assert "Ready" in page.inner_text("#export-status")
        assert page.locator(".flashes").count() == 0  # shown once, not again
    finally:
        db.close()
