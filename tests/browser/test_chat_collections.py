"""An instance limited to one collection, in the real browser with the real models: the
chat page's answer cites only that collection's documents, although another document of
the team matches the question better."""

import pytest
from browser_support import ask_with_sources, browser_sign_in

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances

pytestmark = [pytest.mark.browser, pytest.mark.inference]

FILES = {
    "zephyr.md": "# Project Zephyr\n\nThe launch code of Zephyr is PURPLE-OTTER-42.\n",
    "leave.md": "# Leave\n\nThe launch code for annual leave requests is form L-7.\n",
}


def test_an_instance_limited_to_a_collection_never_cites_another(
    live_kb, page, linked_settings, models_dir
):
    from conftest import link_models

    link_models(linked_settings, models_dir)
    db = open_db(linked_settings)
    user, account = accounts.create_user(db, "hr@example.com", utcnow(), account_name="HR Co")
    _, manage = auth.create_key(
        db, user_id=user.id, account_id=account.id, name="m", scope="manage", now=utcnow()
    )
    api = {"Authorization": f"Bearer {manage}"}
    hr = page.request.post(f"{live_kb.url}/api/collections", data={"name": "HR"}, headers=api)
    assert hr.status == 201, hr.text()
    hr_id = hr.json()["id"]
    for name, text in FILES.items():
        fields = {"file": {"name": name, "mimeType": "text/markdown", "buffer": text.encode()}}
        if name == "leave.md":
            fields["collection"] = hr_id
        sent = page.request.post(f"{live_kb.url}/api/documents", multipart=fields, headers=api)
        assert sent.status == 202, sent.text()
    instances.create(
        db,
        account.id,
        "owner",
        {"name": "hr-only", "max_tokens": 4, "temperature": 0.0, "collections": [hr_id]},
        now=utcnow(),
        models=[DEFAULT_CHAT],
        max_tokens_cap=4096,
    )
    browser_sign_in(page.context, db, linked_settings, user.id, account.id, live_kb.url)
    page.goto(live_kb.url + "/knowledge")
    for name in FILES:
        page.locator("#documents tbody tr", has_text=name).locator(".status-ready").wait_for(
            timeout=60_000
        )

    sources = ask_with_sources(page, live_kb.url, "What is the launch code of Zephyr?")
    shown = sources.inner_text()
    assert "leave.md" in shown  # retrieval ran and found the collection's document
    assert "zephyr.md" not in shown and "PURPLE-OTTER" not in page.inner_text("main")

    # The page draws its messages again once the next answer is stored: the sources the
    # reader opened stay open.
    page.get_by_label("Message").fill("And the one for leave?")
    page.get_by_role("button", name="Send").click()
    page.locator("article.msg-assistant").nth(1).locator(".msg-meta").wait_for(timeout=60_000)
    page.wait_for_function("!document.querySelector('.streaming')")
    page.wait_for_load_state("networkidle")
    assert sources.get_attribute("open") is not None
    db.close()
