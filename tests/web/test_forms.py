"""Forms answer with a redirect (POST-redirect-GET) and a one-time message on the page
they land on; a new API key is shown once, by the page after the redirect."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import time

import pytest

import appliance
from appliance import vault
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import service as chat
from appliance.instances import service as instances
from appliance.web import flash


def csrf_from(html: str) -> str:
    return re.search(r'name="_csrf_token" value="([^"]+)"', html)[1]


@pytest.fixture
def owner(client, db, settings, clock):
    user, team = accounts.create_user(db, "owner@example.com", clock(), account_name="Acme")
    client.cookies.set("session", auth.create_session(db, settings, user.id, team.id, clock()))
    return user, team


def post_form(client, path: str, data: dict, page: str = "/settings"):
    token = csrf_from(client.get(page).text)
    return client.post(path, data={**data, "_csrf_token": token}, follow_redirects=False)


def test_a_new_key_is_shown_once_with_examples_and_a_reload_creates_none(client, db, owner, clock):
    _, team = owner
    created = post_form(client, "/settings/keys", {"name": "laptop", "scope": "inference"})
    assert created.status_code == 303 and created.headers["location"] == "/settings#keys"
    page = client.get("/settings").text
    (key,) = auth.list_keys(db, team.id)
    secret = re.search(r'<code class="secret" id="new-key">(apl_[^<]+)</code>', page)[1]
    assert auth.authenticate_key(db, secret, clock()).id == key.id
    assert "API key “laptop” created." in page
    assert 'data-copy="new-key"' in page and 'data-copy="example-python"' in page
    assert f'-H "Authorization: Bearer {secret}"' in page
    assert 'base_url="http://127.0.0.1:8000/v1"' in page
    # A reload (GET) shows the list without the secret and creates nothing.
    again = client.get("/settings").text
    assert secret not in again and "created." not in again
    assert len(auth.list_keys(db, team.id)) == 1


def test_an_invite_is_confirmed_once(client, db, owner):
    sent = post_form(client, "/settings/invites", {"email": "new@example.com", "role": "member"})
    assert sent.status_code == 303 and sent.headers["location"] == "/settings#members"
    assert "Invite sent to new@example.com (member)." in client.get("/settings").text
    assert "Invite sent" not in client.get("/settings").text


def test_accepting_and_declining_an_invite_confirm_once(client, db, owner, settings, clock):
    user, team = owner
    boss, other = accounts.create_user(db, "boss@example.com", clock(), account_name="Other")
    offers = [
        accounts.invite(db, account.id, "owner", actor.id, "new@example.com", "member", clock())
        for actor, account in ((user, team), (boss, other))
    ]
    newcomer = accounts.ensure_user(db, "new@example.com", clock())
    client.cookies.set("session", auth.create_session(db, settings, newcomer.id, None, clock()))
    declined = post_form(client, f"/invites/{offers[1].id}/decline", {}, page="/invites")
    assert declined.status_code == 303 and declined.headers["location"] == "/invites"
    assert "Invite declined." in client.get("/invites").text
    assert "Invite declined." not in client.get("/invites").text
    joined = post_form(client, f"/invites/{offers[0].id}/accept", {}, page="/invites")
    assert joined.status_code == 303 and joined.headers["location"] == "/"
    assert "You joined Acme." in client.get("/").text
    assert "You joined" not in client.get("/").text
    assert [a.id for a, _ in accounts.accounts_of(db, newcomer.id)] == [team.id]


def test_renaming_and_deleting_a_conversation_confirm_once(client, db, owner, clock):
    user, team = owner
    bot = instances.create(
        db, team.id, "owner", {"name": "bot"}, models=["tiny"], max_tokens_cap=64, now=clock()
    )
    talk = chat.create(db, team.id, user.id, bot.id, clock())
    page = f"/chat/{talk.id}"
    renamed = post_form(client, f"{page}/rename", {"title": "Flour"}, page=page)
    assert renamed.status_code == 303 and renamed.headers["location"] == page
    assert "Conversation renamed." in client.get(page).text
    assert "Conversation renamed." not in client.get(page).text
    deleted = post_form(client, f"{page}/delete", {}, page=page)
    assert deleted.status_code == 303 and deleted.headers["location"] == "/chat"
    assert "Conversation deleted." in client.get("/chat").text
    assert "Conversation deleted." not in client.get("/chat").text


def test_skipping_onboarding_switching_teams_and_signing_out_confirm_once(client, db, owner, clock):
    user, _ = owner
    skipped = post_form(client, "/onboarding", {"action": "skip"}, page="/onboarding")
    assert skipped.status_code == 303 and skipped.headers["location"] == "/"
    assert "Onboarding skipped" in client.get("/").text
    assert "Onboarding skipped" not in client.get("/").text
    _, other = accounts.create_user(db, user.email, clock(), account_name="Side project")
    switched = post_form(client, "/account/switch", {"account_id": other.id})
    assert switched.status_code == 303 and switched.headers["location"] == "/"
    assert "You are now working in Side project." in client.get("/").text
    assert "now working in" not in client.get("/").text
    out = post_form(client, "/logout", {})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert "You are signed out." in client.get("/login").text
    assert "signed out" not in client.get("/login").text


def test_a_forged_tampered_or_stale_message_is_ignored(client, owner, settings):
    def main(page: str) -> str:
        return page.split("<main", 1)[1].split("</main>")[0]

    def signed(payload: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload).encode())
        key = hashlib.sha256(b"flash:" + vault.read_secret(settings, "session_key").encode())
        return body.decode() + "." + hmac.new(key.digest(), body, hashlib.sha256).hexdigest()

    now = int(time.time())
    client.cookies.set(flash.NAME, signed({"flashes": [["ok", "Fresh"]], "at": now}))
    assert "Fresh" in main(client.get("/settings").text)  # the helper signs as the app does
    forged = signed({"flashes": [["ok", "Forged"]], "at": now})[:-2] + "00"
    client.cookies.set(flash.NAME, forged)
    assert "Forged" not in main(client.get("/settings").text)
    client.cookies.set(flash.NAME, signed({"flashes": [["ok", "Stale"]], "at": now - 120}))
    assert "Stale" not in main(client.get("/settings").text)


@pytest.mark.parametrize(
    ("page", "path", "data", "title", "message"),
    [
        (
            "/settings",
            "/settings/invites",
            {"email": "nope", "role": "member"},
            "Settings",
            "email",
        ),
        ("/settings", "/settings/invites", {"email": "owner@example.com"}, "Settings", "already"),
        ("/settings", "/settings/members/{me}/role", {"role": "member"}, "Settings", "one owner"),
        ("/settings", "/settings/members/{me}/remove", {}, "Settings", "last owner cannot"),
        ("/settings", "/settings/team", {"name": ""}, "Settings", "team name must be 1 to 100"),
        ("/settings", "/settings/keys", {"name": "k", "scope": "x"}, "Settings", "The scope must"),
        ("/instances", "/instances", {"name": "a"}, "Instances", "No chat model is installed."),
        ("/billing", "/billing/caps", {"monthly_usd": "5"}, "Billing", "A cap is set on an"),
        ("/billing", "/billing/checkout", {"amount_usd": "abc"}, "Billing", "an amount in USD"),
    ],
)
def test_a_failed_form_explains_on_the_same_page(client, owner, page, path, data, title, message):
    refused = post_form(client, path.format(me=owner[0].id), data, page)
    assert refused.status_code == 400
    assert f"<title>{title} ·" in refused.text  # the form's own page, drawn again
    error = re.search(r'<p class="flash flash-error">(.*?)</p>', refused.text, re.S)
    assert error and message in html.unescape(error[1])


def test_dashboard_lists_next_steps_until_done(client, db, owner, settings, clock):
    user, team = owner
    page = client.get("/").text
    steps = re.search(r'<ol class="next-steps">(.*?)</ol>', page, re.S)[1]
    for label, href in [
        ("Upload documents", "/knowledge"),
        ("Ask a question", "/chat"),
        ("Invite someone", "/settings#members"),
        ("Create an API key", "/settings#keys"),
    ]:
        assert f'<a href="{href}">{label}</a>' in steps
    auth.create_key(
        db, user_id=user.id, account_id=team.id, name="k", scope="inference", now=clock()
    )
    accounts.invite(db, team.id, "owner", user.id, "b@example.com", "member", clock())
    steps = re.search(r'<ol class="next-steps">(.*?)</ol>', client.get("/").text, re.S)[1]
    assert '<li class="done">Create an API key' in steps
    assert '<li class="done">Invite someone' in steps
    assert '<a href="/chat">Ask a question</a>' in steps


def test_footer_shows_the_version_on_every_page(client, owner):
    for path in ("/", "/settings", "/privacy", "/login"):
        assert f"Appliance {appliance.__version__}</span>" in client.get(path).text, path


def test_over_https_the_message_cookie_is_secure_and_host_prefixed(tmp_path, clock):
    from conftest import make_settings
    from litestar.testing import TestClient

    from appliance.cli import initialise
    from appliance.db import open_db
    from appliance.web import create_app

    settings = make_settings(tmp_path / "data", **{"web.public_url": "https://appliance.test"})
    initialise(settings)
    db = open_db(settings)
    user, team = accounts.create_user(db, "owner@example.com", clock(), account_name="Acme")
    session = auth.create_session(db, settings, user.id, team.id, clock())
    db.close()
    app = create_app(settings, clock=clock)
    with TestClient(app, base_url="https://appliance.test") as client:
        client.cookies.set("__Host-session", session)
        created = post_form(client, "/settings/keys", {"name": "ci", "scope": "inference"})
        cookie = created.headers["set-cookie"]
        assert cookie.startswith("__Host-flash=") and "Secure" in cookie and "HttpOnly" in cookie
        shown = client.get("/settings")
        assert 'id="new-key">apl_' in shown.text
        assert "__Host-flash=;" in shown.headers["set-cookie"]
        assert "Secure" in shown.headers["set-cookie"]
