"""API keys, members, invites, roles, onboarding, and isolation between accounts."""

import hashlib
import re

import pytest
from litestar.testing import TestClient
from signin_support import api_key, mails_to, sign_in

from appliance.accounts import service as accounts

OWNER = "owner@example.com"
MEMBER = "member@example.com"
OTHER = "other@example.org"


@pytest.fixture
def team(db, clock):
    owner, account = accounts.create_user(db, OWNER, clock(), account_name="Acme")
    member, _ = accounts.create_user(db, MEMBER, clock(), account_name="Acme", role="member")
    other, other_account = accounts.create_user(db, OTHER, clock(), account_name="Globex")
    return {
        "owner": owner,
        "member": member,
        "account": account,
        "other": other,
        "other_account": other_account,
    }


@pytest.fixture
def owner_client(client, settings, team):
    sign_in(client, settings, OWNER)
    return client


@pytest.fixture
def signed_in(app, settings):
    """A factory of extra signed-in clients (no lifespan: the app has no startup work)."""

    def make(email):
        client = TestClient(app, base_url="http://127.0.0.1:8000")
        sign_in(client, settings, email)
        return client

    return make


# -- API keys ---------------------------------------------------------------------------


def test_key_is_shown_once_and_stored_as_sha256(owner_client, db):
    created = owner_client.post("/api/keys", json={"name": "ci", "scope": "manage"})
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith("apl_") and len(secret) >= 4 + 32
    listed = owner_client.get("/api/keys").json()
    assert [k["name"] for k in listed] == ["ci"]
    assert "key" not in listed[0] and secret not in str(listed)
    stored = db.execute("select key_hash from api_keys").fetchone()[0]
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


def test_manage_key_acts_on_the_api_and_revocation_is_immediate(owner_client, app):
    secret = owner_client.post("/api/keys", json={"name": "s", "scope": "manage"}).json()
    with TestClient(app) as script:
        headers = {"Authorization": f"Bearer {secret['key']}"}
        assert script.get("/api/members", headers=headers).status_code == 200
        # no CSRF header needed for a bearer key
        made = script.post("/api/keys", json={"name": "x", "scope": "inference"}, headers=headers)
        assert made.status_code == 201
        assert owner_client.delete(f"/api/keys/{secret['id']}").status_code == 204
        assert script.get("/api/members", headers=headers).status_code == 401


def test_key_in_the_query_string_is_refused(owner_client, app):
    secret = owner_client.post("/api/keys", json={"name": "s", "scope": "manage"}).json()["key"]
    with TestClient(app) as script:
        assert script.get(f"/api/members?api_key={secret}").status_code == 400
        assert script.get(f"/v1/models?key={secret}").status_code == 400


def test_scopes_and_expiry(owner_client, app, clock):
    inference = owner_client.post("/api/keys", json={"name": "i", "scope": "inference"}).json()
    expiring = owner_client.post(
        "/api/keys",
        json={
            "name": "e",
            "scope": "manage",
            "expires_at": (clock.now.date().isoformat()) + "T10:00:00+00:00",
        },
    ).json()
    bad = owner_client.post("/api/keys", json={"name": "b", "scope": "root"})
    assert bad.status_code == 400
    past = owner_client.post(
        "/api/keys", json={"name": "p", "scope": "inference", "expires_at": "2000-01-01"}
    )
    assert past.status_code == 400
    with TestClient(app) as script:
        as_inference = {"Authorization": f"Bearer {inference['key']}"}
        assert script.get("/api/members", headers=as_inference).status_code == 401
        as_expiring = {"Authorization": f"Bearer {expiring['key']}"}
        assert script.get("/api/members", headers=as_expiring).status_code == 200
        clock.advance(hours=2)
        assert script.get("/api/members", headers=as_expiring).status_code == 401


def test_a_session_cookie_alone_never_authorises_v1(owner_client):
    response = owner_client.get("/v1/models")
    assert response.status_code == 401
    assert "error" in response.json()


def test_an_inference_key_authorises_v1(app, db, clock, team):
    secret = api_key(db, team["member"], team["account"], "inference", clock())
    with TestClient(app) as client:
        response = client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}  # no instance yet


def test_members_see_only_their_own_keys_and_cannot_mint_manage_keys(
    signed_in, app, settings, team
):
    member = signed_in(MEMBER)
    assert member.post("/api/keys", json={"name": "m", "scope": "manage"}).status_code == 400
    own = member.post("/api/keys", json={"name": "mine", "scope": "inference"}).json()
    owner = signed_in(OWNER)
    theirs = owner.post("/api/keys", json={"name": "owner's", "scope": "inference"}).json()
    assert [k["name"] for k in member.get("/api/keys").json()] == ["mine"]
    assert {k["name"] for k in owner.get("/api/keys").json()} == {"mine", "owner's"}
    assert member.delete(f"/api/keys/{theirs['id']}").status_code == 404
    assert member.delete(f"/api/keys/{own['id']}").status_code == 204


# -- members, roles and invites ---------------------------------------------------------


def test_removed_member_loses_sessions_and_keys_at_once(
    signed_in, app, settings, team, owner_client
):
    member = signed_in(MEMBER)
    secret = member.post("/api/keys", json={"name": "m", "scope": "inference"}).json()["key"]
    assert member.get("/api/me").status_code == 200
    assert owner_client.delete(f"/api/members/{team['member'].id}").status_code == 204
    assert member.get("/api/me").status_code == 401
    with TestClient(app) as script:
        response = script.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 401


def test_suspended_account_keys_fail_at_once(owner_client, app, db, team):
    secret = owner_client.post("/api/keys", json={"name": "s", "scope": "manage"}).json()["key"]
    db.execute("update accounts set status = 'suspended' where id = ?", [team["account"].id])
    with TestClient(app) as script:
        assert (
            script.get("/api/members", headers={"Authorization": f"Bearer {secret}"}).status_code
            == 401
        )
    assert owner_client.get("/api/me").status_code == 401


def test_roles(signed_in, owner_client, app, settings, team):
    member_id = team["member"].id
    member = signed_in(MEMBER)
    assert member.post("/api/invites", json={"email": "x@example.com"}).status_code == 404
    assert member.patch(f"/api/members/{member_id}", json={"role": "owner"}).status_code == 404
    promoted = owner_client.patch(f"/api/members/{member_id}", json={"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    admin = signed_in(MEMBER)
    owner_id = team["owner"].id
    assert admin.patch(f"/api/members/{owner_id}", json={"role": "member"}).status_code == 400
    assert admin.delete(f"/api/members/{owner_id}").status_code == 400
    last = owner_client.patch(f"/api/members/{owner_id}", json={"role": "member"})
    assert last.status_code == 409
    assert owner_client.delete(f"/api/members/{owner_id}").status_code == 409
    bad = owner_client.patch(f"/api/members/{member_id}", json={"role": "emperor"})
    assert bad.status_code == 400


def test_invite_leads_to_membership(signed_in, owner_client, app, settings, team):
    invited = owner_client.post("/api/invites", json={"email": "New@Example.com", "role": "member"})
    assert invited.status_code == 201
    assert invited.json()["email"] == "new@example.com"
    assert mails_to(settings, "new@example.com") == 1  # the invite
    assert [i["email"] for i in owner_client.get("/api/invites").json()] == ["new@example.com"]
    newcomer = signed_in("new@example.com")
    (offer,) = newcomer.get("/api/me/invites").json()
    assert offer["account_name"] == "Acme" and offer["invited_by"] == OWNER
    accepted = newcomer.post(f"/api/me/invites/{offer['id']}/accept")
    assert accepted.status_code == 200, accepted.text
    me = newcomer.get("/api/me").json()
    assert me["account"]["id"] == team["account"].id and me["account"]["role"] == "member"
    assert owner_client.get("/api/invites").json() == []
    duplicate = owner_client.post("/api/invites", json={"email": MEMBER})
    assert duplicate.status_code == 409


def test_withdrawn_invite_cannot_sign_in(owner_client, settings, app):
    invite = owner_client.post("/api/invites", json={"email": "gone@example.com"}).json()
    assert owner_client.delete(f"/api/invites/{invite['id']}").status_code == 204
    with TestClient(app) as stranger:
        assert (
            stranger.post("/api/auth/code", json={"email": "gone@example.com"}).status_code == 202
        )
    # Only the invite mail, no sign-in code: the address may no longer sign in.
    assert mails_to(settings, "gone@example.com") == 1


def test_user_in_two_accounts_switches(signed_in, app, settings, db, clock, team):
    accounts.add_member(db, team["other_account"].id, team["member"].id, "member", clock())
    member = signed_in(MEMBER)
    me = member.get("/api/me").json()
    assert {a["name"] for a in me["accounts"]} == {"Acme", "Globex"}
    target = next(a for a in me["accounts"] if a["id"] != me["account"]["id"])
    assert member.put("/api/me/account", json={"account_id": target["id"]}).status_code == 200
    assert member.get("/api/me").json()["account"]["id"] == target["id"]
    stranger_account = accounts.create_account(db, "Initech", clock())
    refused = member.put("/api/me/account", json={"account_id": stranger_account.id})
    assert refused.status_code == 404


# -- onboarding -------------------------------------------------------------------------


def test_onboarding_profile(owner_client, settings):
    assert owner_client.get("/api/profile").json()["completed_at"] is None
    refused = owner_client.put("/api/profile", json={"business_name": "Acme"})
    assert refused.status_code == 400
    assert str(settings.privacy.minimum_age) in refused.json()["error"]["message"]
    saved = owner_client.put(
        "/api/profile",
        json={
            "business_name": "Acme",
            "tone": "warm",
            "language": "English",
            "age_confirmed": True,
        },
    )
    assert saved.status_code == 200
    profile = owner_client.get("/api/profile").json()
    assert profile["business_name"] == "Acme" and profile["completed_at"]
    assert (
        owner_client.put("/api/profile", json={"nonsense": "x", "age_confirmed": True}).status_code
        == 400
    )
    too_long = owner_client.put("/api/profile", json={"tone": "x" * 501, "age_confirmed": True})
    assert too_long.status_code == 400


def test_team_is_named_after_the_business_and_an_owner_renames_it(
    signed_in, owner_client, settings, team
):
    answers = {"business_name": "Brightside Bakery", "age_confirmed": True}
    assert owner_client.put("/api/profile", json=answers).status_code == 200
    assert owner_client.get("/api/team").json()["name"] == "Brightside Bakery"
    renamed = owner_client.patch("/api/team", json={"name": "Brightside"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Brightside"
    # Saving the profile again with the same business name keeps the rename.
    assert owner_client.put("/api/profile", json=answers).status_code == 200
    assert owner_client.get("/api/team").json()["name"] == "Brightside"
    assert owner_client.patch("/api/team", json={"name": " "}).status_code == 400
    member = signed_in(MEMBER)
    refused = member.patch("/api/team", json={"name": "Mine now"})
    assert refused.status_code == 403
    assert "Only an owner" in refused.json()["error"]["message"]
    assert member.get("/api/team").json()["name"] == "Brightside"
    # Invites carry the team's current name, in the mail and in the offer.
    owner_client.post("/api/invites", json={"email": "new@example.com", "role": "member"})
    (offer,) = signed_in("new@example.com").get("/api/me/invites").json()
    assert offer["account_name"] == "Brightside"
    from appliance import mail

    first_mail = next(m for m in mail.outbox_messages(settings) if m["To"] == "new@example.com")
    assert "Brightside" in first_mail.get_body(preferencelist=("plain",)).get_content()


def test_settings_page_renames_the_team(owner_client, team):
    del owner_client.headers["X-CSRFToken"]  # a form posts the page's token
    owner_client.cookies.delete("csrf")
    page = owner_client.get("/settings")
    assert 'action="/settings/team"' in page.text and 'value="Acme"' in page.text
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    renamed = owner_client.post(
        "/settings/team", data={"name": "Acme Ltd", "_csrf_token": token}, follow_redirects=False
    )
    assert renamed.status_code in (302, 303), renamed.text
    assert 'value="Acme Ltd"' in owner_client.get("/settings").text


# -- isolation --------------------------------------------------------------------------


def test_another_account_gets_404_for_every_object(signed_in, owner_client, app, settings, team):
    key = owner_client.post("/api/keys", json={"name": "k", "scope": "inference"}).json()
    invite = owner_client.post("/api/invites", json={"email": "inv@example.com"}).json()
    stranger = signed_in(OTHER)
    assert stranger.delete(f"/api/keys/{key['id']}").status_code == 404
    assert stranger.delete(f"/api/invites/{invite['id']}").status_code == 404
    assert (
        stranger.patch(f"/api/members/{team['member'].id}", json={"role": "admin"}).status_code
        == 404
    )
    assert stranger.delete(f"/api/members/{team['member'].id}").status_code == 404
    assert [m["email"] for m in stranger.get("/api/members").json()] == [OTHER]
    assert stranger.get("/api/keys").json() == []
    assert stranger.get("/api/invites").json() == []
    # nothing changed for Acme
    assert [k["id"] for k in owner_client.get("/api/keys").json()] == [key["id"]]
    assert len(owner_client.get("/api/members").json()) == 2


def test_anonymous_gets_401_on_the_api_and_a_redirect_on_pages(client):
    for path in ("/api/me", "/api/members", "/api/keys", "/api/invites", "/api/profile"):
        assert client.get(path).status_code == 401, path
    page = client.get("/settings", follow_redirects=False)
    assert page.status_code in (302, 303)
    assert page.headers["location"].startswith("/login?next=/settings")
