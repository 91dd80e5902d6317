"""The persona API and Settings page: roles, isolation, uploads, CSRF and escaping."""

import re

import pytest
from persona_support import (
    NOW,
    PROFILE,
    bearer,
    claude_settings,
    csrf_headers,
    fake_anthropic,
    new_settings,
    open_database,
    sign_in,
    web,
)

from appliance.accounts import service as accounts
from appliance.persona import voice

SAMPLE = (
    b"Thanks for getting in touch with us today. We will have your order ready by Friday "
    b"morning, and we will call you as soon as it is boxed up.\n"
)


def csrf_from(html):
    return re.search(r'name="_csrf_token" value="([^"]+)"', html).group(1)


@pytest.fixture
def site(tmp_path):
    settings = new_settings(tmp_path / "data")
    db = open_database(settings)
    with web(settings) as client:
        yield settings, db, client
    db.close()


def owner_key(db, settings, email="owner@example.com", account_name=None):
    user, account = accounts.create_user(db, email, NOW, role="owner", account_name=account_name)
    accounts.save_profile(db, settings, account.id, "owner", PROFILE, NOW)
    account = accounts.account(db, account.id)  # onboarding names the team after the business
    return user, account, bearer(db, user, account)


def test_prompt_api_edit_local_generate_and_history(site):
    settings, db, client = site
    _, _, auth = owner_key(db, settings)
    first = client.get("/api/persona", headers=auth).json()
    assert first["version"] is None and first["source"] == "local"
    assert first["text"].startswith("You are the private AI assistant of the team at Example")
    assert first["claude_enabled"] is False and first["history"] == []

    local = client.post("/api/persona/local", headers=auth)
    assert local.status_code == 201
    assert local.json()["version"] == 1 and local.json()["source"] == "local"

    edited = client.put("/api/persona", json={"text": "You are Crumb."}, headers=auth)
    assert edited.status_code == 200 and edited.json()["source"] == "edited"
    too_long = client.put("/api/persona", json={"text": "x" * 8001}, headers=auth)
    assert too_long.status_code == 400 and "8000" in too_long.json()["error"]["message"]

    generated = client.post("/api/persona/generate", headers=auth)
    assert generated.status_code == 201
    body = generated.json()
    assert body["source"] == "local" and body["version"] == 3
    assert body["previous"] == "You are Crumb."
    assert {"op": "-", "line": "You are Crumb."} in body["diff"]
    assert {"op": "+", "line": body["text"].splitlines()[0]} in body["diff"]

    now = client.get("/api/persona", headers=auth).json()
    assert [h["version"] for h in now["history"]] == [3, 2, 1]
    assert now["text"] == body["text"] and now["version"] == 3
    assert client.get("/api/persona/egress", headers=auth).json() == []


def test_cookie_sessions_need_the_csrf_header_on_the_api(site):
    settings, db, client = site
    sign_in(client, db, settings, "owner@example.com")
    refused = client.put("/api/persona", json={"text": "You are Crumb."})
    assert refused.status_code == 403
    ok = client.put("/api/persona", json={"text": "You are Crumb."}, headers=csrf_headers(client))
    assert ok.status_code == 200
    assert client.get("/api/persona").json()["text"] == "You are Crumb."


def test_members_get_404_everywhere(site):
    settings, db, client = site
    _, account, auth = owner_key(db, settings)
    sample = client.post(
        "/api/voice-samples", files={"file": ("a.txt", SAMPLE)}, headers=auth
    ).json()
    member, _ = accounts.create_user(
        db, "member@example.com", NOW, account_name=account.name, role="member"
    )
    member_auth = bearer(db, member, account)
    for method, path in [
        ("GET", "/api/persona"),
        ("PUT", "/api/persona"),
        ("POST", "/api/persona/generate"),
        ("POST", "/api/persona/local"),
        ("GET", "/api/persona/egress"),
        ("GET", "/api/voice-samples"),
        ("DELETE", f"/api/voice-samples/{sample['id']}"),
    ]:
        kwargs = {"json": {"text": "Be evil."}} if method == "PUT" else {}
        response = client.request(method, path, headers=member_auth, **kwargs)
        assert response.status_code == 404, (method, path)
    upload = client.post(
        "/api/voice-samples", files={"file": ("m.txt", SAMPLE)}, headers=member_auth
    )
    assert upload.status_code == 404
    sign_in(client, db, settings, "member@example.com", "member", account_name=account.name)
    assert client.get("/settings/persona").status_code == 404
    assert db.execute("select count(*) from system_prompts").fetchone()[0] == 0
    assert db.execute("select count(*) from voice_samples").fetchone()[0] == 1


def test_another_account_sees_none_of_it(tmp_path):
    with fake_anthropic() as fake:
        settings = claude_settings(tmp_path / "data", fake)
        db = open_database(settings)
        with web(settings) as client:
            _, account_a, auth_a = owner_key(db, settings, "a@example.com")
            _, _, auth_b = owner_key(db, settings, "b@example.com")
            sample = client.post(
                "/api/voice-samples", files={"file": ("a.txt", SAMPLE)}, headers=auth_a
            ).json()
            assert client.post("/api/persona/generate", headers=auth_a).status_code == 201
            assert len(client.get("/api/persona/egress", headers=auth_a).json()) == 1

            assert client.get("/api/persona/egress", headers=auth_b).json() == []
            assert client.get("/api/voice-samples", headers=auth_b).json() == []
            assert client.get("/api/persona", headers=auth_b).json()["history"] == []
            gone = client.delete(f"/api/voice-samples/{sample['id']}", headers=auth_b)
            assert gone.status_code == 404
            missing = client.delete("/api/voice-samples/vsm_doesnotexist", headers=auth_b)
            assert missing.status_code == 404
            assert gone.json() == missing.json()  # says nothing about existence
        assert len(fake.requests) == 1
    assert voice.sample_path(settings, account_a.id, sample["id"]).exists()


def test_upload_api(tmp_path):
    settings = new_settings(tmp_path / "data", **{"persona.max_sample_bytes": 2000})
    db = open_database(settings)
    with web(settings) as client:
        _, account, auth = owner_key(db, settings)
        created = client.post("/api/voice-samples", files={"file": ("a.txt", SAMPLE)}, headers=auth)
        assert created.status_code == 201
        body = created.json()
        assert body["filename"] == "a.txt" and body["size"] == len(SAMPLE)
        assert body["excerpts"] == [SAMPLE.decode().strip()]
        assert "account_id" not in body
        assert [s["id"] for s in client.get("/api/voice-samples", headers=auth).json()] == [
            body["id"]
        ]

        big = client.post(
            "/api/voice-samples", files={"file": ("big.txt", b"word " * 1000)}, headers=auth
        )
        assert big.status_code == 413
        assert "2,000 bytes" in big.json()["error"]["message"]
        huge = client.post(
            "/api/voice-samples", files={"file": ("huge.txt", b"word " * 40_000)}, headers=auth
        )
        assert huge.status_code == 413  # refused from Content-Length, before reading it

        png = client.post(
            "/api/voice-samples",
            files={"file": ("cat.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")},
            headers=auth,
        )
        assert png.status_code == 400 and "a PNG image" in png.json()["error"]["message"]
        pdf = client.post(
            "/api/voice-samples", files={"file": ("a.pdf", b"%PDF-1.7")}, headers=auth
        )
        assert pdf.status_code == 400 and ".docx" in pdf.json()["error"]["message"]
        wrong_field = client.post(
            "/api/voice-samples", files={"upload": ("a.txt", SAMPLE)}, headers=auth
        )
        assert wrong_field.status_code == 400

        deleted = client.delete(f"/api/voice-samples/{body['id']}", headers=auth)
        assert deleted.status_code == 204
        assert client.get("/api/voice-samples", headers=auth).json() == []
        assert not voice.sample_path(settings, account.id, body["id"]).exists()
        assert client.delete(f"/api/voice-samples/{body['id']}", headers=auth).status_code == 404
    assert db.execute("select count(*) from voice_excerpts").fetchone()[0] == 0


def test_page_shows_the_prompt_and_saves_the_edit_form(site):
    settings, db, client = site
    user, account = sign_in(client, db, settings, "owner@example.com")
    accounts.save_profile(db, settings, account.id, "owner", PROFILE, NOW)
    page = client.get("/settings/persona")
    assert page.status_code == 200
    assert "You are the private AI assistant of the team at Example Bakery." in page.text
    assert "nothing leaves the box" in page.text
    assert "Generate with Claude" not in page.text

    saved = client.post(
        "/settings/persona",
        data={
            "text": "You are Crumb,\r\nthe bakery's helper.",
            "_csrf_token": csrf_from(page.text),
        },
        follow_redirects=False,
    )
    assert saved.status_code in (302, 303)
    assert saved.headers["location"] == "/settings/persona#prompt"
    assert "Saved as a new version." in client.get(saved.headers["location"]).text
    api = client.get("/api/persona").json()
    assert api["text"] == "You are Crumb,\nthe bakery's helper."
    assert api["source"] == "edited" and api["history"][0]["created_by"] == user.id

    no_token = client.post("/settings/persona", data={"text": "Hijacked."})
    assert no_token.status_code == 403
    assert client.get("/api/persona").json()["version"] == 1


def test_page_regeneration_shows_an_escaped_diff(site):
    settings, db, client = site
    sign_in(client, db, settings, "owner@example.com")
    token = csrf_from(client.get("/settings/persona").text)
    client.post(
        "/settings/persona", data={"text": "<script>alert(1)</script>", "_csrf_token": token}
    )
    page = client.post("/settings/persona/generate", data={"_csrf_token": token})
    assert page.status_code == 200
    assert "What changed" in page.text
    assert "<del>\u2212 &lt;script&gt;alert(1)&lt;/script&gt;</del>" in page.text
    assert "<ins>+ You are the private AI assistant of a small team." in page.text
    assert "<script>alert" not in page.text
    assert "Version 2 written by the local template." in page.text
    # The POST answered with a redirect: a reload shows the page once more without the
    # message or the diff, and makes no third version.
    again = client.get("/settings/persona").text
    assert "What changed" not in again and "Version 2 written" not in again
    assert client.get("/api/persona").json()["version"] == 2


def test_page_upload_and_delete_forms(site):
    settings, db, client = site
    _, account = sign_in(client, db, settings, "owner@example.com")
    page = client.get("/settings/persona")
    assert 'enctype="multipart/form-data"' in page.text
    token = csrf_from(page.text)
    uploaded = client.post(
        "/settings/persona/samples",
        data={"_csrf_token": token},
        files={"file": ("voice.txt", SAMPLE)},
        follow_redirects=False,
    )
    assert uploaded.status_code in (302, 303)
    page = client.get(uploaded.headers["location"])
    assert "voice.txt" in page.text and "Voice sample added." in page.text
    assert "Thanks for getting in touch with us today." in page.text
    assert "Examples of the team&#39;s writing style:" in page.text

    bad = client.post(
        "/settings/persona/samples",
        data={"_csrf_token": token},
        files={"file": ("nul.txt", b"a\x00b")},
    )
    assert bad.status_code == 400 and "not text" in bad.text

    [sample] = voice.samples(db, account.id, "owner")
    deleted = client.post(
        f"/settings/persona/samples/{sample.id}/delete",
        data={"_csrf_token": token},
        follow_redirects=False,
    )
    assert deleted.status_code in (302, 303)
    assert voice.samples(db, account.id, "owner") == []
    assert not voice.sample_path(settings, account.id, sample.id).exists()


def test_page_with_claude_offers_it_and_falls_back_when_it_fails(tmp_path):
    with fake_anthropic(status=500) as fake:
        settings = claude_settings(tmp_path / "data", fake)
        db = open_database(settings)
        with web(settings) as client:
            _, account = sign_in(client, db, settings, "owner@example.com")
            accounts.save_profile(db, settings, account.id, "owner", PROFILE, NOW)
            page = client.get("/settings/persona")
            assert "Generate with Claude" in page.text
            assert "Business: Example Bakery" in page.text  # what would be sent, shown
            token = csrf_from(page.text)
            failed = client.post("/settings/persona/generate", data={"_csrf_token": token})
            assert failed.status_code == 503
            assert "Nothing was changed" in failed.text
            assert "Use the local template instead" in failed.text
            assert db.execute("select count(*) from system_prompts").fetchone()[0] == 0
            assert "HTTP 500" in failed.text  # the attempts are in the egress table
            local = client.post("/settings/persona/local", data={"_csrf_token": token})
            assert local.status_code == 200
            assert client.get("/api/persona").json()["source"] == "local"


def test_the_schema_lists_the_persona_api(site):
    _, _, client = site
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert {"/api/persona", "/api/persona/generate", "/api/voice-samples"} <= set(paths)
    assert not any(p.startswith("/settings/persona") for p in paths)
