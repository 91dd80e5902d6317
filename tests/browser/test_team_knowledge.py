"""The Knowledge page for a team in the real browser: who uploaded what, a member who can
remove only their own uploads, and collections (create, file a document)."""

import pytest
from browser_support import browser_sign_in
from conftest import indexed_document

from appliance.accounts import service as accounts
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.knowledge import service as knowledge

pytestmark = pytest.mark.browser


def signed_in(browser, service, settings, db, user, account):
    context = browser.new_context()
    browser_sign_in(context, db, settings, user.id, account.id, service.url)
    return context.new_page()


def test_a_member_removes_only_their_own_and_an_owner_files_into_a_collection(
    live_web, browser, settings
):
    db = open_db(settings)
    owner, account = accounts.create_user(db, "owner@example.com", utcnow(), account_name="Acme")
    member = accounts.ensure_user(db, "member@example.com", utcnow())
    accounts.add_member(db, account.id, member.id, "member", utcnow())
    indexed_document(db, settings, utcnow, account, owner, "plan.md", "the owner's plan")
    indexed_document(db, settings, utcnow, account, member, "notes.md", "the member's notes")

    as_owner = signed_in(browser, live_web, settings, db, owner, account)
    as_owner.goto(live_web.url + "/knowledge")
    as_owner.get_by_label("New collection").fill("HR")
    as_owner.get_by_role("button", name="Create").click()
    as_owner.locator("#collections li", has_text="HR").wait_for()
    plan = as_owner.locator("#documents tbody tr", has_text="plan.md")
    plan.locator("summary").click()
    plan.get_by_label("HR").check()
    as_owner.locator("#collections li", has_text="HR (1)").wait_for()
    as_owner.locator("#documents tbody tr", has_text="plan.md").locator(
        "summary", has_text="HR"
    ).wait_for()

    as_member = signed_in(browser, live_web, settings, db, member, account)
    as_member.goto(live_web.url + "/knowledge")
    rows = as_member.locator("#documents tbody tr")
    rows.filter(has_text="notes.md").get_by_role("button", name="Remove").wait_for()
    theirs = rows.filter(has_text="plan.md")
    assert "owner@example.com" in theirs.inner_text() and "HR" in theirs.inner_text()
    assert theirs.get_by_role("button", name="Remove").count() == 0
    assert as_member.get_by_label("New collection").count() == 0
    as_member.once("dialog", lambda dialog: dialog.accept())
    rows.filter(has_text="notes.md").get_by_role("button", name="Remove").click()
    rows.filter(has_text="notes.md").wait_for(state="detached")
    # Asked directly, the server refuses too, and says why.
    refused = as_member.evaluate(
        """async (id) => {
            const csrf = document.cookie.split("; ").find((c) => c.startsWith(
                document.getElementById("kb").dataset.csrfCookie + "="));
            const r = await fetch("/api/documents/" + id, {method: "DELETE",
                headers: {"X-CSRFToken": decodeURIComponent(csrf.split("=")[1])}});
            return [r.status, (await r.json()).error.message];
        }""",
        knowledge.documents(db, account.id)[-1].id,
    )
    assert refused[0] == 403 and "Only the person who uploaded" in refused[1]
    assert [d.filename for d in knowledge.documents(db, account.id)] == ["plan.md"]
    db.close()
