"""Signing in through the real API in tests: codes read from the file backend's outbox,
and API keys.

Imported by test modules anywhere under tests/ (pytest puts this folder on ``sys.path``
for tests/conftest.py), and by scripts/bench/load.py as ``tests.signin_support``.
"""

from __future__ import annotations

import re

from appliance import mail
from appliance.auth import service as auth

CSRF = "test-csrf-token-value"


def last_code(settings, to: str) -> str:
    """The newest sign-in code mailed to ``to``."""
    for message in reversed(mail.outbox_messages(settings)):
        if message["To"] == to:
            text = message.get_body(preferencelist=("plain",)).get_content()
            found = re.search(r"^\s*(\d{6})\s*$", text, re.M)
            if found:
                return found.group(1)
    raise AssertionError(f"no code mailed to {to}")


def mails_to(settings, to: str) -> int:
    return sum(1 for message in mail.outbox_messages(settings) if message["To"] == to)


def sign_in(client, settings, email: str) -> dict:
    """The whole sign-in flow through the JSON API; leaves cookie and CSRF header set."""
    assert client.post("/api/auth/code", json={"email": email}).status_code == 202
    code = last_code(settings, email)
    response = client.post("/api/auth/session", json={"email": email, "code": code})
    assert response.status_code == 200, response.text
    client.cookies.set("csrf", CSRF)
    client.headers["X-CSRFToken"] = CSRF
    return response.json()


def api_key(db, user, account, scope: str, now) -> str:
    """The secret of a new ``scope`` key of ``user`` in ``account``."""
    return auth.create_key(
        db, user_id=user.id, account_id=account.id, name=scope, scope=scope, now=now
    )[1]
