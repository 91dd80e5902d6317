"""The Chat page in the real browser: ask about an uploaded fact, see the streamed answer
and its source, follow up, stop a long answer, delete the conversation."""

import pytest
from browser_support import ask_with_sources, browser_sign_in

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import service as chat
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances

pytestmark = [pytest.mark.browser, pytest.mark.inference]

FACT = "# Project Zephyr\n\nThe launch code of Project Zephyr is PURPLE-OTTER-42.\n"


def test_ask_follow_up_stop_and_delete(live_kb, page, linked_settings, tmp_path, models_dir):
    from conftest import link_models

    link_models(linked_settings, models_dir)
    db = open_db(linked_settings)
    user, account = accounts.create_user(db, "chat@example.com", utcnow(), account_name="Chat")
    instances.create(
        db,
        account.id,
        "owner",
        {"name": "assistant", "max_tokens": 32, "temperature": 0.0},
        now=utcnow(),
        models=[DEFAULT_CHAT],
        max_tokens_cap=4096,
    )
    browser_sign_in(page.context, db, linked_settings, user.id, account.id, live_kb.url)
    fact = tmp_path / "zephyr.md"
    fact.write_text(FACT)

    page.goto(live_kb.url + "/knowledge")
    page.set_input_files("#upload-input", [str(fact)])
    page.locator("#documents tbody tr", has_text="zephyr.md").locator(".status-ready").wait_for(
        timeout=60_000
    )

    # Ask: the answer streams in, then shows the retrieved source with its exact passage.
    sources = ask_with_sources(page, live_kb.url, "What is the launch code of Project Zephyr?")
    assert "zephyr.md" in sources.inner_text()
    assert "PURPLE-OTTER-42" in sources.locator("blockquote").first.inner_text()
    assert page.locator("#chat-title").inner_text().startswith("What is the launch code")
    assert "What is the launch code" in page.locator(".conv-list").inner_text()
    assert page.get_by_role("button", name="Stop").is_hidden()  # only while streaming

    # Follow up: the page shows both turns, and the second request carried the first.
    page.get_by_label("Message").fill("Repeat that code once more.")
    page.get_by_label("Message").press("Enter")
    page.locator("article.msg-assistant").nth(1).locator(".msg-meta").wait_for(timeout=60_000)
    conversation_id = page.url.rsplit("/", 1)[1]
    stored = chat.get(db, account.id, user.id, conversation_id)
    assert [m.role for m in stored.messages] == ["user", "assistant"] * 2
    assert stored.messages[3].prompt_tokens > stored.messages[1].prompt_tokens

    # Stop a long answer: what was written is kept and marked as stopped.
    instance = instances.by_name(db, account.id, "assistant")
    instances.update(
        db,
        account.id,
        "owner",
        instance.id,
        {"max_tokens": 1000, "knowledge": False},
        now=utcnow(),
        models=[DEFAULT_CHAT],
        max_tokens_cap=4096,
    )
    page.get_by_label("Message").fill("Write a very long story about a lighthouse keeper.")
    page.get_by_role("button", name="Send").click()
    streaming = page.locator("article.pending .streaming-text")
    page.wait_for_function(
        "() => (document.querySelector('article.pending .streaming-text') || {}).textContent"
        "?.length > 20",
        timeout=60_000,
    )
    assert streaming.count() == 1
    page.get_by_role("button", name="Stop").click()
    stopped = page.locator("article.msg-assistant").nth(2).locator(".msg-meta")
    stopped.wait_for(timeout=30_000)
    assert "Stopped" in stopped.inner_text()
    last = chat.get(db, account.id, user.id, conversation_id).messages[-1]
    assert last.finish_reason == "cancelled"
    assert 0 < last.completion_tokens < 1000

    # Delete: confirmed, gone from the list and from the database.
    page.get_by_text("Rename or delete").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete conversation").click()
    page.wait_for_url(live_kb.url + "/chat")
    assert "What is the launch code" not in page.locator(".conv-list").inner_text()
    assert chat.list_for_user(db, account.id, user.id) == []
    db.close()


def test_while_the_model_is_down_the_question_stays_with_answer_again(page, settings):
    """The inference service is down (crashed, restarting): the page retries by itself
    while the server says to (Retry-After), then says so in words; the question is kept
    (once), and "Answer again" is offered."""
    from conftest import free_port, make_settings, start_service

    (settings.paths.data_dir / "appliance.toml").write_text(
        f'[inference]\nurl = "http://127.0.0.1:{free_port()}"\n'
    )
    down = make_settings(settings.paths.data_dir)
    db = open_db(down)
    user, account = accounts.create_user(db, "down@example.com", utcnow(), account_name="Down")
    instance = instances.create(
        db,
        account.id,
        "owner",
        {"name": "assistant", "max_tokens": 16},
        now=utcnow(),
        models=[DEFAULT_CHAT],
        max_tokens_cap=4096,
    )
    conversation = chat.create(db, account.id, user.id, instance.id, utcnow())
    token = auth.create_session(db, down, user.id, account.id, utcnow())
    db.close()
    port = free_port()
    web = start_service(["web", "--port", str(port)], down, f"http://127.0.0.1:{port}")
    try:
        page.context.add_cookies([{"name": "session", "value": token, "url": web.url}])
        page.goto(f"{web.url}/chat/{conversation.id}")
        page.get_by_label("Message").fill("Where is the spare kettle?")
        page.get_by_role("button", name="Send").click()
        # 503 with Retry-After: the page says it is retrying, and does (twice), by itself.
        retrying = page.locator("#chat-retry")
        retrying.wait_for(state="visible", timeout=30_000)
        assert "Busy, retrying in" in retrying.inner_text()
        error = page.locator("#chat-error")
        error.wait_for(state="visible", timeout=40_000)
        assert retrying.is_hidden()
        assert "not answering right now" in error.inner_text()
        assert "127.0.0.1" not in error.inner_text()
        page.get_by_role("button", name="Answer again").wait_for(timeout=10_000)
        assert (
            page.locator("article.msg-user").inner_text().startswith("Where is the spare kettle?")
        )
        assert page.locator("article.msg-assistant").count() == 0
        assert page.locator("article.msg-user").count() == 1  # retried, not asked again
        assert page.get_by_role("button", name="Send").is_enabled()
    finally:
        web.stop()
