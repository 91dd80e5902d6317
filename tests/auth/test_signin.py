"""Sign-in by one-time code: every row of SECURITY.md's sign-in table."""

import hashlib

import pytest
from litestar.testing import TestClient
from signin_support import last_code, mails_to, sign_in

from appliance.accounts import service as accounts
from appliance.web import create_app

OWNER = "owner@example.com"


@pytest.fixture
def owner(db, clock):
    return accounts.create_user(db, OWNER, clock(), account_name="Acme", role="owner")


def test_full_flow_sets_a_session_and_me_works(client, settings, owner):
    body = sign_in(client, settings, OWNER)
    assert body["user"]["email"] == OWNER
    me = client.get("/api/me")
    assert me.status_code == 200
    assert me.json()["account"] == {"id": owner[1].id, "name": "Acme", "role": "owner"}


def test_code_is_six_digits_and_only_its_hmac_is_stored(client, settings, db, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    assert len(code) == 6 and code.isdigit()
    stored = db.execute("select code_mac from otp_codes").fetchall()
    assert len(stored) == 1
    assert code not in stored[0][0]
    assert len(stored[0][0]) == 64  # an HMAC-SHA256, not the code


def test_same_answer_for_known_and_unknown_addresses(client, settings, owner):
    known = client.post("/api/auth/code", json={"email": OWNER})
    unknown = client.post("/api/auth/code", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    assert mails_to(settings, OWNER) == 1
    assert mails_to(settings, "nobody@example.com") == 0


def test_code_is_single_use(client, settings, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    assert client.post("/api/auth/session", json={"email": OWNER, "code": code}).status_code == 200
    again = client.post("/api/auth/session", json={"email": OWNER, "code": code})
    assert again.status_code == 400
    assert again.json()["error"]["message"].startswith("That code is not valid")


def test_code_expires_after_ten_minutes(client, settings, clock, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    clock.advance(minutes=10, seconds=1)
    assert client.post("/api/auth/session", json={"email": OWNER, "code": code}).status_code == 400


def test_code_is_void_after_five_wrong_tries(client, settings, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        response = client.post("/api/auth/session", json={"email": OWNER, "code": wrong})
        assert response.status_code == 400
    assert client.post("/api/auth/session", json={"email": OWNER, "code": code}).status_code == 400


def test_a_new_code_voids_the_old_one(client, settings, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    first = last_code(settings, OWNER)
    client.post("/api/auth/code", json={"email": OWNER})
    second = last_code(settings, OWNER)
    if first != second:
        assert (
            client.post("/api/auth/session", json={"email": OWNER, "code": first}).status_code
            == 400
        )
    assert (
        client.post("/api/auth/session", json={"email": OWNER, "code": second}).status_code == 200
    )


def test_code_is_bound_to_the_attempt_that_asked(client, app, settings, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    with TestClient(app, base_url="http://127.0.0.1:8000") as other:
        stolen = other.post("/api/auth/session", json={"email": OWNER, "code": code})
    assert stolen.status_code == 400


def test_sending_is_throttled_per_address_across_two_app_instances(settings, clock, queue, owner):
    one = TestClient(create_app(settings, clock=clock, queue=queue))
    two = TestClient(create_app(settings, clock=clock, queue=queue))
    limit = settings.auth.codes_per_address_per_hour
    statuses = []
    for i in range(limit + 1):
        client = one if i % 2 else two
        statuses.append(client.post("/api/auth/code", json={"email": OWNER}).status_code)
    assert statuses[:limit] == [202] * limit
    assert statuses[limit] == 429
    unknown = [
        two.post("/api/auth/code", json={"email": "x@example.com"}).status_code
        for _ in range(limit + 1)
    ]
    assert unknown[-1] == 429  # same for an unknown address: no enumeration
    clock.advance(hours=1, seconds=1)
    assert one.post("/api/auth/code", json={"email": OWNER}).status_code == 202


def test_sending_is_throttled_per_client(settings, clock, queue, db, tmp_path):
    from conftest import make_settings

    from appliance.cli import initialise

    strict = make_settings(settings.paths.data_dir, **{"auth.codes_per_client_per_hour": 3})
    initialise(strict)
    client = TestClient(create_app(strict, clock=clock, queue=queue))
    statuses = [
        client.post("/api/auth/code", json={"email": f"u{i}@example.com"}).status_code
        for i in range(4)
    ]
    assert statuses == [202, 202, 202, 429]


def test_many_failures_lock_the_account_for_a_while(settings, clock, queue, owner):
    from conftest import make_settings

    strict = make_settings(
        settings.paths.data_dir, **{"auth.account_lock_failures": 5, "auth.lock_minutes": 30}
    )
    client = TestClient(create_app(strict, clock=clock, queue=queue))
    client.post("/api/auth/code", json={"email": OWNER})
    code = last_code(settings, OWNER)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(4):
        client.post("/api/auth/session", json={"email": OWNER, "code": wrong})
    client.post("/api/auth/code", json={"email": OWNER})
    fresh = last_code(settings, OWNER)
    client.post("/api/auth/session", json={"email": OWNER, "code": wrong})  # the 5th failure
    assert client.post("/api/auth/session", json={"email": OWNER, "code": fresh}).status_code == 400
    clock.advance(minutes=31)
    client.post("/api/auth/code", json={"email": OWNER})
    later = last_code(settings, OWNER)
    assert client.post("/api/auth/session", json={"email": OWNER, "code": later}).status_code == 200


def test_session_cookie_attributes_over_http(client, settings, owner):
    client.post("/api/auth/code", json={"email": OWNER})
    response = client.post(
        "/api/auth/session", json={"email": OWNER, "code": last_code(settings, OWNER)}
    )
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("session=")
    token = cookie.split("=", 1)[1].split(";", 1)[0]
    assert len(token) >= 43  # 256 bits, URL-safe base64
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered


def test_session_cookie_over_https_uses_host_prefix_and_secure(settings, clock, queue, owner):
    from conftest import make_settings

    secure = make_settings(settings.paths.data_dir, **{"web.public_url": "https://ai.example"})
    with TestClient(
        create_app(secure, clock=clock, queue=queue), base_url="https://ai.example"
    ) as client:
        client.post("/api/auth/code", json={"email": OWNER})
        response = client.post(
            "/api/auth/session", json={"email": OWNER, "code": last_code(settings, OWNER)}
        )
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-session=")
        assert "secure" in cookie.lower()
        assert "domain" not in cookie.lower()
        assert client.get("/api/me").status_code == 200


def test_session_id_is_stored_hashed_and_rotated_at_sign_in(client, settings, db, owner):
    sign_in(client, settings, OWNER)
    first = client.cookies.get("session")
    hashes = [row[0] for row in db.execute("select id_hash from sessions")]
    assert hashes == [hashlib.sha256(first.encode()).hexdigest()]
    sign_in(client, settings, OWNER)
    second = client.cookies.get("session")
    assert second != first
    client.cookies.set("session", first)
    assert client.get("/api/me").status_code == 401  # the old id was revoked at sign-in
    client.cookies.set("session", second)
    assert client.get("/api/me").status_code == 200


def test_idle_and_absolute_expiry(client, settings, clock, owner):
    sign_in(client, settings, OWNER)
    clock.advance(minutes=29)
    assert client.get("/api/me").status_code == 200
    clock.advance(minutes=31)
    assert client.get("/api/me").status_code == 401
    sign_in(client, settings, OWNER)
    for _ in range(12 * 3):  # in use every 20 minutes, for 12 hours
        clock.advance(minutes=20)
        if client.get("/api/me").status_code != 200:
            break
    assert client.get("/api/me").status_code == 401


def test_sign_out_revokes_the_session_on_the_server(client, settings, owner):
    sign_in(client, settings, OWNER)
    token = client.cookies.get("session")
    assert client.delete("/api/auth/session").status_code == 200
    client.cookies.set("session", token)
    assert client.get("/api/me").status_code == 401


def test_state_changing_api_call_needs_the_csrf_header(client, settings, owner):
    sign_in(client, settings, OWNER)
    del client.headers["X-CSRFToken"]
    refused = client.post("/api/keys", json={"name": "k", "scope": "inference"})
    assert refused.status_code == 403
    client.headers["X-CSRFToken"] = "something-else"
    assert client.post("/api/keys", json={"name": "k", "scope": "inference"}).status_code == 403


def test_cross_site_api_post_is_refused(client, settings, owner):
    sign_in(client, settings, OWNER)
    response = client.post(
        "/api/keys",
        json={"name": "k", "scope": "inference"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403


def test_bad_requests_get_clear_errors(client):
    assert client.post("/api/auth/code", json={"email": "not-an-email"}).status_code == 400
    assert client.post("/api/auth/code", json={"mail": "a@b.co"}).status_code == 400
    assert client.post("/api/auth/code", content=b"{nope").status_code == 400
    response = client.post("/api/auth/session", json={"email": "a@b.co", "code": "12"})
    assert response.status_code == 400


def test_uninvited_address_cannot_sign_in_and_open_signup_creates_an_account(
    client, settings, clock, queue, db
):
    client.post("/api/auth/code", json={"email": "stranger@example.com"})
    assert mails_to(settings, "stranger@example.com") == 0
    from conftest import make_settings

    from appliance.tasks import create_queue

    open_settings = make_settings(settings.paths.data_dir, **{"auth.signup": "open"})
    open_queue = create_queue(open_settings, immediate=True)
    with TestClient(create_app(open_settings, clock=clock, queue=open_queue)) as open_client:
        body = sign_in(open_client, settings, "stranger@example.com")
        me = open_client.get("/api/me").json()
    assert me["account"]["role"] == "owner"
    assert body["account"]["id"] == me["account"]["id"]
