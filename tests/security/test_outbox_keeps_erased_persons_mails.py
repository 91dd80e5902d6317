"""Audit 2026-12, finding 8: after an account was erased, the outbox (the ``file`` mail
backend's delivery spool) kept that person's mails, with their address and sign-in codes,
for the whole log window. Erasure removes them; other people's mails stay."""

import re

from litestar.testing import TestClient
from signin_support import sign_in

from appliance import mail
from appliance.accounts import service as accounts
from appliance.privacy import erasure


def addressed(settings) -> list[str]:
    return [m["To"] for m in mail.outbox_messages(settings)]


def mentioning(settings, address: str) -> list:
    whole = re.compile(r"(?<![\w.+-])" + re.escape(address))  # not notleaving@…
    return [m for m in mail.outbox_messages(settings) if whole.search(m.as_string())]


def test_erasure_removes_the_persons_mails_from_the_outbox(settings, db, clock, app):
    _, team = accounts.create_user(db, "leaving@example.com", clock(), account_name="Gone")
    accounts.create_user(db, "notleaving@example.com", clock(), account_name="Stays")
    with TestClient(app) as leaving, TestClient(app) as stays:
        sign_in(leaving, settings, "leaving@example.com")
        sign_in(stays, settings, "notleaving@example.com")
        # An invite mail to someone else names the inviter.
        assert leaving.post("/api/invites", json={"email": "guest@example.net"}).status_code == 201
    assert "leaving@example.com" in addressed(settings)
    assert len(mentioning(settings, "leaving@example.com")) == 2

    found = erasure.request_deletion(
        db,
        settings,
        team.id,
        requested_by="operator",
        request="operator via CLI",
        notify_email=None,
        now=clock(),
    )
    assert found.user_ids
    receipt = erasure.erase_account(db, settings, team.id, clock())

    assert mentioning(settings, "leaving@example.com") == []
    # A mail to an address that merely ends the same way stays.
    assert addressed(settings) == ["notleaving@example.com"]
    assert receipt.body["counts"]["outbox"] == 2
