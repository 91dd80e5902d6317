"""Audit 2026-12, finding 5: signing in silently accepted every open invite and landed
the user in the newest account. An invite is now a choice the invited person makes
(accept or decline, page and API); sign-in lands in the account they used last."""

import re

from litestar.testing import TestClient
from signin_support import CSRF, last_code, sign_in

from appliance.accounts import service as accounts

OWNER = "owner@example.com"
NEWCOMER = "newcomer@example.com"


def page_sign_in(browser, settings, email: str):
    """The /login pages, as a browser does them; returns the verify step's redirect."""
    token = re.search(r'name="_csrf_token" value="([^"]+)"', browser.get("/login").text)[1]
    browser.post("/login", data={"email": email, "next": "/", "_csrf_token": token})
    return browser.post(
        "/login/verify",
        data={"code": last_code(settings, email), "next": "/", "_csrf_token": token},
        follow_redirects=False,
    )


def test_an_invited_user_who_signs_in_and_does_nothing_is_not_a_member(settings, db, clock, app):
    _, team = accounts.create_user(db, OWNER, clock(), account_name="Acme")
    with TestClient(app) as owner, TestClient(app) as newcomer:
        sign_in(owner, settings, OWNER)
        assert owner.post("/api/invites", json={"email": NEWCOMER}).status_code == 201
        signed = sign_in(newcomer, settings, NEWCOMER)
        assert signed["account"] is None
        assert [o["account_name"] for o in signed["invites"]] == ["Acme"]
        # Signed in, not a member: nothing of the account is reachable.
        for path in ("/api/me", "/api/members", "/api/documents"):
            assert newcomer.get(path).status_code == 401, path
        assert [i["email"] for i in owner.get("/api/invites").json()] == [NEWCOMER]
    user = accounts.user_by_email(db, NEWCOMER)
    assert user is not None and accounts.role_in(db, team.id, user.id) is None


def test_the_pages_show_the_invite_and_only_a_choice_joins(settings, db, clock, app):
    owner, team = accounts.create_user(db, OWNER, clock(), account_name="Acme")
    accounts.invite(db, team.id, "owner", owner.id, NEWCOMER, "member", clock())
    with TestClient(app, base_url="http://127.0.0.1:8000") as browser:
        assert page_sign_in(browser, settings, NEWCOMER).headers["location"] == "/invites"
        # Any other page sends a session without an account back to its invites.
        for path in ("/", "/chat"):
            assert browser.get(path, follow_redirects=False).headers["location"] == "/invites"
        page = browser.get("/invites")
        assert page.status_code == 200 and "Acme" in page.text
        user = accounts.user_by_email(db, NEWCOMER)
        assert accounts.role_in(db, team.id, user.id) is None
        (offer,) = accounts.invited(db, user, clock())
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)[1]
        # A form without the CSRF token is refused and changes nothing.
        assert browser.post(f"/invites/{offer.id}/accept").status_code == 403
        assert accounts.role_in(db, team.id, user.id) is None
        accepted = browser.post(
            f"/invites/{offer.id}/accept", data={"_csrf_token": token}, follow_redirects=False
        )
        assert accepted.status_code in (302, 303)
        assert accounts.role_in(db, team.id, user.id) == "member"
        assert browser.get("/chat").status_code == 200


def test_declining_closes_the_invite_and_the_api_needs_csrf(settings, db, clock, app):
    owner, team = accounts.create_user(db, OWNER, clock(), account_name="Acme")
    stranger, elsewhere = accounts.create_user(db, "stranger@example.org", clock())
    accounts.invite(db, team.id, "owner", owner.id, NEWCOMER, "admin", clock())
    with TestClient(app) as newcomer, TestClient(app) as other:
        sign_in(newcomer, settings, NEWCOMER)
        sign_in(other, settings, "stranger@example.org")
        (offer,) = newcomer.get("/api/me/invites").json()
        # Someone else cannot answer it; without the CSRF header neither can the invitee.
        assert other.post(f"/api/me/invites/{offer['id']}/accept").status_code == 404
        del newcomer.headers["X-CSRFToken"]
        assert newcomer.post(f"/api/me/invites/{offer['id']}/decline").status_code == 403
        newcomer.headers["X-CSRFToken"] = CSRF
        assert newcomer.post(f"/api/me/invites/{offer['id']}/decline").status_code == 204
        assert newcomer.get("/api/me/invites").json() == []
        assert newcomer.post(f"/api/me/invites/{offer['id']}/accept").status_code == 404
    assert accounts.invites(db, team.id) == []
    user = accounts.user_by_email(db, NEWCOMER)
    assert accounts.role_in(db, team.id, user.id) is None
    assert accounts.role_in(db, elsewhere.id, stranger.id) == "owner"


def test_sign_in_lands_in_the_account_used_last_and_lists_the_others(settings, db, clock, app):
    member, first = accounts.create_user(db, NEWCOMER, clock(), account_name="First")
    _, second = accounts.create_user(db, OWNER, clock(), account_name="Second")
    accounts.add_member(db, second.id, member.id, "member", clock())
    inviter, third = accounts.create_user(db, "third@example.com", clock(), account_name="Third")
    accounts.invite(db, third.id, "owner", inviter.id, NEWCOMER, "member", clock())
    with TestClient(app) as client:
        signed = sign_in(client, settings, NEWCOMER)
        assert signed["account"]["id"] == second.id  # nothing used yet: the newest joined
        assert client.put("/api/me/account", json={"account_id": first.id}).status_code == 200
        assert client.delete("/api/auth/session").status_code == 200
        signed = sign_in(client, settings, NEWCOMER)
        assert signed["account"]["id"] == first.id
        me = client.get("/api/me").json()
        assert {a["name"] for a in me["accounts"]} == {"First", "Second"}
        assert [o["account_name"] for o in me["invites"]] == ["Third"]
    assert accounts.role_in(db, third.id, member.id) is None
