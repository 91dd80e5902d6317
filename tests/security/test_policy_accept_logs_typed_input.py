"""Audit 2026-12, finding 8: ``POST /privacy/accept`` with a non-numeric version answered
500, and the request log's error column stored what the client had typed. Now: 400, and
nothing the client typed reaches the request log or the service log."""

import re

from litestar.testing import TestClient
from signin_support import sign_in

from appliance.accounts import service as accounts
from appliance.privacy import requestlog

TYPED = "xylophonecanary3391"


def test_a_non_numeric_version_is_a_400_and_is_not_logged(
    settings, db, clock, app, production_logs
):
    accounts.create_user(db, "reader@example.com", clock(), account_name="Readers")
    with TestClient(app, base_url="http://127.0.0.1:8000") as browser:
        sign_in(browser, settings, "reader@example.com")
        # Pages' forms carry the CSRF middleware's own token, not the API's header.
        browser.cookies.delete("csrf")
        del browser.headers["X-CSRFToken"]
        page = browser.get("/settings/data")
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        response = browser.post(
            "/privacy/accept",
            data={"version": f"1{TYPED}", "next": "/", "_csrf_token": token},
            follow_redirects=False,
        )
    assert response.status_code == 400
    rows = requestlog.entries(db, path="/privacy/accept")
    assert [r.status for r in rows] == [400]
    assert TYPED not in repr(requestlog.entries(db))
    assert TYPED not in production_logs.getvalue()


def test_an_unexpected_error_is_logged_by_where_it_was_raised_not_its_message():
    try:
        int(f"1{TYPED}")
    except ValueError as exc:
        text = requestlog.error_text(exc, user_facing=False)
    assert TYPED not in text
    assert text.startswith("ValueError at ") and "test_policy_accept_logs_typed_input.py:" in text
