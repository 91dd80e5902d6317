"""First-run setup: the one-time link records the first operator, once."""

import re

import pytest

from appliance import firstrun


@pytest.fixture
def token(settings, db):
    return firstrun.setup_token(settings, db)


def csrf_from(html):
    return re.search(r'name="_csrf_token" value="([^"]+)"', html).group(1)


def test_home_explains_setup_until_claimed(client):
    assert "Finish setting up" in client.get("/").text


def test_wrong_or_missing_token_is_404(client, token):
    assert client.get("/setup").status_code == 404
    assert client.get("/setup?token=" + "x" * len(token)).status_code == 404


def test_claim_records_the_email_and_burns_the_token(client, token, db, settings):
    form = client.get(f"/setup?token={token}")
    assert form.status_code == 200
    csrf = csrf_from(form.text)
    response = client.post(
        "/setup",
        data={"token": token, "email": " Ada@Example.COM ", "_csrf_token": csrf},
        follow_redirects=False,
    )
    # Claiming signs the operator in and lands on onboarding, with a one-time message.
    assert response.status_code == 303 and response.headers["location"] == "/onboarding"
    landing = client.get("/onboarding")
    assert landing.status_code == 200
    assert "This appliance is yours: ada@example.com" in landing.text
    assert "This appliance is yours" not in client.get("/onboarding").text
    me = client.get("/api/me").json()
    assert me["user"] == {"id": me["user"]["id"], "email": "ada@example.com", "operator": True}
    assert me["account"]["role"] == "owner"
    assert db.execute("select email from setup_claims").fetchall() == [("ada@example.com",)]
    assert not (settings.paths.secrets / firstrun.TOKEN_NAME).exists()
    assert client.get(f"/setup?token={token}").status_code == 404
    again = client.post(
        "/setup", data={"token": token, "email": "eve@example.com", "_csrf_token": csrf}
    )
    assert again.status_code == 404
    assert db.execute("select count(*) from setup_claims").fetchone()[0] == 1
    assert "Finish setting up" not in client.get("/").text


def test_invalid_email_is_explained_and_nothing_recorded(client, token, db):
    csrf = csrf_from(client.get(f"/setup?token={token}").text)
    response = client.post(
        "/setup", data={"token": token, "email": "not-an-email", "_csrf_token": csrf}
    )
    assert response.status_code == 400
    assert "valid email" in response.text
    assert 'value="not-an-email"' in response.text
    assert db.execute("select count(*) from setup_claims").fetchone()[0] == 0


def test_email_is_escaped_when_shown_again(client, token):
    csrf = csrf_from(client.get(f"/setup?token={token}").text)
    response = client.post(
        "/setup", data={"token": token, "email": '"><script>x</script>', "_csrf_token": csrf}
    )
    assert "<script>x</script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_post_without_csrf_token_is_refused(client, token, db):
    response = client.post("/setup", data={"token": token, "email": "a@example.com"})
    assert response.status_code == 403
    assert db.execute("select count(*) from setup_claims").fetchone()[0] == 0


def test_cross_site_post_is_refused_even_with_a_token(client, token, db):
    csrf = csrf_from(client.get(f"/setup?token={token}").text)
    data = {"token": token, "email": "a@example.com", "_csrf_token": csrf}
    evil = client.post("/setup", data=data, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    fetched = client.post("/setup", data=data, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetched.status_code == 403
    assert db.execute("select count(*) from setup_claims").fetchone()[0] == 0
    same = client.post(
        "/setup", data=data, headers={"Origin": "http://127.0.0.1:8000"}, follow_redirects=False
    )
    assert same.status_code == 303


def test_an_operator_created_with_the_cli_ends_the_setup_link(settings, db, clock):
    from appliance.accounts import service as accounts

    token = firstrun.setup_token(settings, db)
    assert token
    accounts.create_user(db, "ops@example.com", clock(), operator=True)
    assert firstrun.is_claimed(db)
    assert firstrun.setup_token(settings, db) is None
    with pytest.raises(firstrun.NotFound):
        firstrun.check_token(settings, db, token)
