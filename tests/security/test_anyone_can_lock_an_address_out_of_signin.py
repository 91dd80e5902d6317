"""Audit 2026-12, finding 4: wrong codes counted against an address even when no code had
been sent to the browser that typed them, so 100 anonymous requests locked the operator
out of sign-in for an hour (and five voided the code in their mailbox).

Now a failure counts against the address only when it is made against a code that was
sent to that attempt (its cookie); every failure counts against the source address, which
is what gets locked. The attacker here is a second machine (127.0.0.2) against the real web
service and worker."""

from __future__ import annotations

import base64
import secrets

import httpx
import pytest
from conftest import wait_until

from appliance import mail
from appliance.accounts import service as accounts

VICTIM = "operator@example.com"
ATTACKER = "mallory@example.com"


@pytest.fixture
def people(db, clock):
    accounts.create_user(db, VICTIM, clock(), account_name="Acme", operator=True)
    accounts.create_user(db, ATTACKER, clock(), account_name="Mallory")


def code_for(settings, to: str, after: int) -> str:
    """The code in the first mail to ``to`` after the first ``after`` mails (the worker
    sends it)."""

    def mailed():
        messages = [m for m in mail.outbox_messages(settings) if m["To"] == to][after:]
        return messages[0] if messages else None

    message = wait_until(mailed, timeout=30, what=f"a code for {to}")
    text = message.get_body(preferencelist=("plain",)).get_content()
    return next(word for word in text.split() if word.isdigit() and len(word) == 6)


def sign_in(client: httpx.Client, settings, email: str, sent_before: int) -> httpx.Response:
    assert client.post("/api/auth/code", json={"email": email}).status_code == 202
    code = code_for(settings, email, sent_before)
    return client.post("/api/auth/session", json={"email": email, "code": code})


def attack(url: str, settings) -> httpx.Client:
    """More wrong codes for the victim than ``auth.account_lock_failures``, half with no
    attempt cookie and half with a made-up one, from another machine."""
    attacker = httpx.Client(
        base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30
    )
    encoded = base64.urlsafe_b64encode(VICTIM.encode()).decode().rstrip("=")
    for i in range(settings.auth.account_lock_failures + 10):
        forged = {"Cookie": f"signin={secrets.token_urlsafe(32)}.{encoded}"} if i % 2 else {}
        response = attacker.post(
            "/api/auth/session",
            json={"email": VICTIM, "code": f"{i % 10**6:06d}"},
            headers=forged,
        )
        assert response.status_code == 400
    return attacker


def test_an_attacker_without_the_attempt_cookie_cannot_stop_the_victims_sign_in(
    settings, people, live_app
):
    victim = httpx.Client(base_url=live_app.url, timeout=30)
    # The victim has asked for a code and is reading their mail when the attack starts.
    assert victim.post("/api/auth/code", json={"email": VICTIM}).status_code == 202
    pending = code_for(settings, VICTIM, 0)
    attacker = attack(live_app.url, settings)

    finished = victim.post("/api/auth/session", json={"email": VICTIM, "code": pending})
    assert finished.status_code == 200, finished.text
    # ... and their next sign-in, after another round, works too.
    attack(live_app.url, settings)
    victim.cookies.clear()
    assert sign_in(victim, settings, VICTIM, 1).status_code == 200

    # The attacker's own machine is what got locked: even a right code is refused there.
    refused = sign_in(attacker, settings, ATTACKER, 0)
    assert refused.status_code == 400
