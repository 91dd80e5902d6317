"""Helpers for the auth tests: sign in through the real API, read codes from the outbox."""

import re

from appliance import mail

CSRF = "test-csrf-token-value"


def last_code(settings, to: str) -> str:
    for message in reversed(mail.outbox_messages(settings)):
        if message["To"] == to:
            text = message.get_body(preferencelist=("plain",)).get_content()
            return re.search(r"^\s*(\d{6})\s*$", text, re.M).group(1)
    raise AssertionError(f"no mail to {to}")


def mails_to(settings, to: str) -> int:
    return sum(1 for message in mail.outbox_messages(settings) if message["To"] == to)


def sign_in(client, settings, email: str) -> dict:
    """The whole flow through the JSON API; leaves the session cookie on the client."""
    assert client.post("/api/auth/code", json={"email": email}).status_code == 202
    code = last_code(settings, email)
    response = client.post("/api/auth/session", json={"email": email, "code": code})
    assert response.status_code == 200, response.text
    client.cookies.set("csrf", CSRF)
    client.headers["X-CSRFToken"] = CSRF
    return response.json()
