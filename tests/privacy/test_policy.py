"""The privacy policy: rendered from the repo's template and settings, linked from every
page and email, published in versions users are emailed about and accept on sign-in."""

import re
import subprocess
import sys
from datetime import timedelta

import pytest
from conftest import make_settings
from litestar.testing import TestClient
from policy_support import SAAS_ONLY, configuration, statements
from signin_support import last_code, sign_in

from appliance import firstrun, mail
from appliance.accounts import service as accounts
from appliance.cli import initialise
from appliance.db import open_db
from appliance.errors import Conflict, InvalidInput
from appliance.privacy import policy
from appliance.tasks import create_queue
from appliance.web import create_app


def test_policy_page_is_public_and_filled_from_settings(tmp_path, clock):
    settings = make_settings(
        tmp_path / "data",
        **{
            "privacy.company_legal_name": "Acme Widgets LLC",
            "privacy.contact_email": "dpo@acme.example",
            "privacy.log_retention_days": 14,
            "privacy.erase_window_days": 10,
            "privacy.tax_retention_years": 6,
            "privacy.minimum_age": 16,
            "privacy.operators": ("Jane Doe", "Ops team"),
            "privacy.response_window_business_days": 5,
        },
    )
    initialise(settings)
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    with TestClient(app) as client:
        page = client.get("/privacy")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert "Acme Widgets LLC" in text and "dpo@acme.example" in text
    assert "kept for 14 days" in text and "erased within 10 days" in text
    assert "kept for 6 years" in text and "anyone under 16" in text
    assert "limited to Jane Doe, Ops team" in text and "within 5 business days" in text
    assert "{{" not in page.text and "{%" not in page.text


def policy_text(tmp_path, clock, **overrides) -> str:
    """/privacy as a visitor reads it, for an appliance configured with ``overrides``."""
    settings = make_settings(tmp_path / "data", **overrides)
    initialise(settings)
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    with TestClient(app) as client:
        page = client.get("/privacy")
    assert page.status_code == 200
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("claude", [False, True], ids=["no-claude", "claude"])
@pytest.mark.parametrize("billing", [False, True], ids=["no-billing", "billing"])
def test_the_policy_states_what_this_configuration_does(tmp_path, clock, tls, claude, billing):
    switches = {"tls": tls, "claude": claude, "billing": billing}
    text = policy_text(tmp_path, clock, **configuration(tmp_path, **switches))
    # Each statement appears exactly when the setting behind it is on (docs/privacy.md).
    for statement, shown in statements(**switches).items():
        assert (statement in text) is shown, statement
    for seed in SAAS_ONLY:
        assert seed not in text, seed
    assert "None" not in text  # the footer's version was once shadowed by the policy's


def test_the_policy_names_a_remote_model_server_and_the_mail_server(tmp_path, clock):
    text = policy_text(
        tmp_path,
        clock,
        **{
            "inference.url": "http://gpu-box.lan:8080",
            "mail.backends": ("smtp",),
            "mail.smtp_host": "mail.example.lan",
        },
    )
    assert "runs on a server the operators run at gpu-box.lan" in text
    assert "The language model runs on this appliance" not in text
    assert "The mail server mail.example.lan" in text
    assert "No third party receives your data" not in text


def test_billing_without_stripe_keys_names_no_payment_processor(tmp_path, clock):
    text = policy_text(tmp_path, clock, **{"billing.enabled": True})
    assert "prepaid credit balance" in text and "Card payments are not set up" in text
    assert "Stripe" not in text and "No third party receives your data" in text


def test_operator_details_from_setup_and_admin(tmp_path, clock):
    """Unset, the policy names the operator generically and the first operator's email;
    the first-run setup and /admin set them; publishing from /admin emails every user."""
    settings = make_settings(tmp_path / "data")
    initialise(settings)
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    with TestClient(app) as client:
        token = firstrun.setup_token(settings, open_db(settings))
        page = client.get(f"/setup?token={token}")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        claimed = client.post(
            "/setup",
            data={
                "token": token,
                "email": "ada@example.org",
                "operator_name": "Lovelace Analytics",
                "contact": "privacy@lovelace.example",
                "_csrf_token": csrf,
            },
        )
        assert claimed.status_code == 200, claimed.text
        text = re.sub(r"<[^>]+>", " ", client.get("/privacy").text)
        assert "Lovelace Analytics operates this appliance" in text
        assert "privacy@lovelace.example" in text
        assert "<span>Lovelace Analytics</span>" in client.get("/login").text  # the footer
        sign_in(client, settings, "ada@example.org")
        del client.headers["X-CSRFToken"]  # forms post the page's token
        client.cookies.delete("csrf")
        admin_page = client.get("/admin")
        assert 'action="/admin/policy/publish"' in admin_page.text
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', admin_page.text).group(1)
        saved = client.post(
            "/admin/policy/operator",
            data={
                "operator_name": "Lovelace Ltd",
                "contact": "dpo@lovelace.example",
                "_csrf_token": csrf,
            },
            follow_redirects=False,
        )
        assert saved.status_code in (302, 303), saved.text
        bad = client.post(
            "/admin/policy/operator",
            data={"operator_name": "", "contact": "x", "_csrf_token": csrf},
        )
        assert bad.status_code == 400
        published = client.post(
            "/admin/policy/publish",
            data={"summary": "Our new name", "effective": "", "_csrf_token": csrf},
            follow_redirects=False,
        )
        assert published.status_code in (302, 303), published.text
        again = client.post("/admin/policy/publish", data={"summary": "", "_csrf_token": csrf})
        assert again.status_code == 400 and "unchanged" in again.text
        assert "<span>Lovelace Ltd</span>" in client.get("/privacy").text
    db = open_db(settings)
    (version,) = policy.versions(db)
    assert "Lovelace Ltd operates this appliance" in policy.text_of(db, version.version)
    assert "dpo@lovelace.example" in policy.text_of(db, version.version)
    (announced,) = [
        m.get_body(preferencelist=("plain",)).get_content()
        for m in mail.outbox_messages(settings)
        if m["To"] == "ada@example.org" and "Our new name" in m.as_string()
    ]
    assert "Lovelace Ltd · Privacy policy" in announced  # the mail footer names the operator


def test_without_operator_details_the_policy_names_the_first_operator(tmp_path, clock):
    settings = make_settings(tmp_path / "data")
    initialise(settings)
    db = open_db(settings)
    accounts.create_user(db, "root@example.org", clock(), operator=True)
    text = policy.render_text(db, settings)
    assert "The operator of this appliance runs it" in text
    assert "Questions and requests about your data: root@example.org" in text


def test_every_page_and_email_links_the_policy(settings, client):
    for path in ("/", "/login", "/privacy"):
        assert 'href="/privacy"' in client.get(path).text, path
    message = mail.compose(settings, "signin_code", "a@example.com", code="123456", minutes=10)
    assert f"{settings.public_url}/privacy" in message.text
    assert f"{settings.public_url}/privacy" in message.html


def test_publish_emails_everyone_before_it_takes_effect(settings, db, clock):
    accounts.create_user(db, "one@example.com", clock())
    accounts.create_user(db, "two@example.com", clock())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "policy",
            "publish",
            "--data-dir",
            str(settings.paths.data_dir),
            "--summary",
            "We now keep logs for 30 days.",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "published version 1" in result.stdout
    (version,) = policy.versions(db)
    assert version.text_sha256 == policy.text_hash(policy.render_text(db, settings))
    notice = timedelta(days=settings.privacy.policy_notice_days)
    assert version.effective_at > version.published_at
    # The worker sends one email per user, naming the date it takes effect.
    queued = [t for t in create_queue(settings).huey.pending() if t.name == "send_mail"]
    assert sorted(t.args[1] for t in queued) == ["one@example.com", "two@example.com"]
    assert all(t.args[0] == "policy_changed" for t in queued)
    composed = mail.compose(settings, "policy_changed", "one@example.com", **queued[0].args[2])
    assert version.effective_at[:10] in composed.subject
    assert "keep logs for 30 days" in composed.text
    # Publishing the same text again is refused; a changed text needs the notice period.
    with pytest.raises(Conflict):
        policy.publish(db, settings, clock())
    changed = settings.replace(**{"privacy.log_retention_days": 14})
    with pytest.raises(InvalidInput):
        policy.publish(db, changed, clock(), effective_at=clock() + notice / 2)
    assert policy.publish(db, changed, clock()).version == 2


def test_sign_in_after_the_change_asks_for_acceptance(settings, db, clock, app):
    user, _ = accounts.create_user(db, "reader@example.com", clock())
    accounts.skip_onboarding(db, accounts.accounts_of(db, user.id)[0][0].id, "owner", clock())
    policy.publish(db, settings, clock(), effective_at=clock() + timedelta(days=30))
    with TestClient(app, base_url="http://127.0.0.1:8000") as browser:

        def csrf(path):
            html = browser.get(path).text
            return re.search(r'name="_csrf_token" value="([^"]+)"', html).group(1)

        def sign_in():
            token = csrf("/login")
            browser.post(
                "/login", data={"email": "reader@example.com", "next": "/", "_csrf_token": token}
            )
            code = last_code(settings, "reader@example.com")
            return browser.post(
                "/login/verify",
                data={"code": code, "next": "/", "_csrf_token": token},
                follow_redirects=False,
            )

        # Before it takes effect: nothing to accept.
        assert sign_in().headers["location"] == "/"
        clock.advance(days=31)
        landing = sign_in().headers["location"]
        assert landing.startswith("/privacy/accept")
        page = browser.get(landing)
        assert page.status_code == 200 and "Our privacy policy changed" in page.text
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
        accepted = browser.post(
            "/privacy/accept",
            data={"version": "1", "next": "/", "_csrf_token": token},
            follow_redirects=False,
        )
        assert accepted.status_code in (302, 303), accepted.text
        assert policy.pending(db, user.id, clock()) is None
        assert sign_in().headers["location"] == "/"
        assert browser.get("/api/me/policy").json()["acceptance_required"] is False


def test_the_page_shows_the_text_in_effect_until_the_next_takes_effect(settings, db, clock):
    policy.publish(db, settings, clock(), effective_at=clock())
    changed = settings.replace(**{"privacy.log_retention_days": 21})
    policy.publish(db, changed, clock(), summary="Logs are kept for 21 days.")
    app = create_app(changed, clock=clock, queue=create_queue(changed, immediate=True))
    with TestClient(app) as client:
        page = client.get("/privacy").text
        assert (
            "kept for 30 days, then purged" in page and "kept for 21 days, then purged" not in page
        )
        assert "Logs are kept for 21 days." in page and "/privacy/versions/2" in page
        assert "kept for 21 days, then purged" in client.get("/privacy/versions/2").text
        assert client.get("/privacy/versions/9").status_code == 404
        clock.advance(days=settings.privacy.policy_notice_days, seconds=1)
        page = client.get("/privacy").text
        assert "kept for 21 days, then purged" in page and "Version 2" in page


def test_api_clients_see_and_accept_the_policy(settings, db, clock, app):
    from signin_support import sign_in

    accounts.create_user(db, "script@example.com", clock())
    policy.publish(db, settings, clock(), effective_at=clock())
    with TestClient(app) as client:
        sign_in(client, settings, "script@example.com")
        state = client.get("/api/me/policy").json()
        assert state["version"] == 1 and state["acceptance_required"] is True
        assert client.post("/api/me/policy/accept", json={"version": 2}).status_code == 404
        assert client.post("/api/me/policy/accept", json={"version": "1"}).status_code == 400
        assert client.post("/api/me/policy/accept", json={"version": 1}).status_code == 200
        assert client.get("/api/me/policy").json()["acceptance_required"] is False
