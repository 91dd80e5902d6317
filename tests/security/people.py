"""Helpers for the audit regression tests: people signed in through the real API.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import io
import re
import zipfile

from appliance import mail

CSRF = "test-csrf-token-value"


def last_code(settings, to: str) -> str:
    """The newest sign-in code mailed to ``to`` (read from the file backend's outbox)."""
    for message in reversed(mail.outbox_messages(settings)):
        if message["To"] == to:
            text = message.get_body(preferencelist=("plain",)).get_content()
            found = re.search(r"^\s*(\d{6})\s*$", text, re.M)
            if found:
                return found.group(1)
    raise AssertionError(f"no code mailed to {to}")


def sign_in(client, settings, email: str) -> dict:
    """The whole sign-in flow through the JSON API; leaves cookie and CSRF header set."""
    assert client.post("/api/auth/code", json={"email": email}).status_code == 202
    code = last_code(settings, email)
    response = client.post("/api/auth/session", json={"email": email, "code": code})
    assert response.status_code == 200, response.text
    client.cookies.set("csrf", CSRF)
    client.headers["X-CSRFToken"] = CSRF
    return response.json()


def export_zip(client) -> zipfile.ZipFile:
    """Start a data export (built at once by the immediate queue) and download it."""
    assert client.post("/api/me/export").status_code == 202
    status = client.get("/api/me/export").json()
    assert status["status"] == "ready", status
    download = client.get(status["download_url"])
    assert download.status_code == 200
    return zipfile.ZipFile(io.BytesIO(download.content))
