"""Settings → My data in the real browser: export my data, then delete the account; the
worker builds the export, sends the codes and, after the purge, the confirmation."""

import io
import re
import zipfile

import pytest
from conftest import wait_until

from appliance import mail
from appliance.accounts import service as accounts
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.knowledge import service as knowledge
from appliance.privacy import erasure
from appliance.tasks import create_queue, run_purges

pytestmark = pytest.mark.browser
EMAIL = "leaver@example.com"
CANARY = "okapicanary9901"


def wait_for_code(settings, subject: str) -> str:
    def code():
        for message in reversed(mail.outbox_messages(settings)):
            if message["To"] == EMAIL and subject in message["Subject"]:
                text = message.get_body(preferencelist=("plain",)).get_content()
                return re.search(r"^\s*(\d{6})\s*$", text, re.M).group(1)
        return None

    return wait_until(code, timeout=30, what=f"the mail '{subject}'")


def test_export_my_data_then_delete_the_account(live_app, page, settings):
    base = live_app.url
    db = open_db(settings)
    _, account = accounts.create_user(db, EMAIL, utcnow(), account_name="Leavers")
    accounts.skip_onboarding(db, account.id, "owner", utcnow())
    upload = knowledge.add_document(
        db,
        settings,
        account.id,
        None,
        "plan.md",
        io.BytesIO(f"# Plan\n\n{CANARY}\n".encode()),
        utcnow(),
    )
    db.close()

    page.goto(base + "/login")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_role("button", name="Send me a code").click()
    page.get_by_label("Code").fill(wait_for_code(settings, "sign-in code"))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")

    # Export my data: built by the worker, progress on the page, then a download.
    page.goto(base + "/settings")
    page.get_by_role("link", name=re.compile("Export my data")).click()
    page.get_by_role("heading", name="My data", exact=True).wait_for()
    page.get_by_role("button", name="Export my data").click()
    page.wait_for_url(base + "/settings/data#export")
    # The page follows the export by itself.
    page.locator("#export-download").wait_for(timeout=30_000)
    with page.expect_download() as info:
        page.locator("#export-download").click()
    archive = zipfile.ZipFile(info.value.path())
    names = archive.namelist()
    assert "manifest.json" in names
    original = next(n for n in names if n.startswith(f"documents/{upload.document.id}"))
    assert CANARY in archive.read(original).decode()

    # Delete the account, confirmed by a fresh code.
    page.get_by_role("button", name="Delete the account…").click()
    page.get_by_label(re.compile("We emailed you a one-time code")).fill(
        wait_for_code(settings, "delete your account")
    )
    page.get_by_role("button", name="Delete the account for good").click()
    page.get_by_role("heading", name="Your account is deleted").wait_for()
    page.goto(base + "/settings")
    assert "/login" in page.url  # signed out, and the session is gone on the server

    db = open_db(settings)
    try:
        assert erasure.deletion(db, account.id).erased_at is None  # locked, not yet erased
        run_purges(settings, create_queue(settings).send_mail)
        assert erasure.deletion(db, account.id).erased_at is not None
    finally:
        db.close()
    wait_for_confirmation = lambda: [  # noqa: E731
        m for m in mail.outbox_messages(settings) if "erased" in m["Subject"]
    ]
    (confirmation,) = wait_until(wait_for_confirmation, timeout=30, what="the confirmation")
    assert confirmation["To"] == EMAIL and CANARY not in confirmation.as_string()
