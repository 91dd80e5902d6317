"""The Chat page as a chat app: a long conversation opens at its end with the composer in
view and focused; Enter sends and Shift+Enter adds a line; a new chat starts by typing on
the remembered instance; regenerate keeps the earlier answer (versions 1/2); every message has
a copy button; an oversized paste is refused before it is stored and the refusal survives
a reload; the same at 390 px without sideways scrolling."""

import pytest
from browser_support import browser_sign_in
from conftest import stored_exchange

from appliance.accounts import service as accounts
from appliance.chat import service as chat
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances

pytestmark = [pytest.mark.browser, pytest.mark.inference]

IN_VIEW = """(selector) => {
    const box = document.querySelector(selector).getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight && box.height > 0;
}"""


def long_conversation(db, account_id, user_id, instance, turns=25):
    conversation_id = None
    for n in range(turns):
        question = f"Question number {n}: what does paragraph {n} of the handbook say?"
        answer = f"Answer number {n}. " + "The handbook explains this at some length. " * 12
        conversation_id = stored_exchange(
            db, account_id, user_id, instance, question, answer, utcnow(), conversation_id
        )
    return conversation_id


def test_chat_feels_like_chat(live_kb, page, linked_settings, models_dir):
    from conftest import link_models

    link_models(linked_settings, models_dir)
    db = open_db(linked_settings)
    user, account = accounts.create_user(db, "comp@example.com", utcnow(), account_name="Comp")
    settings = {"max_tokens": 12, "temperature": 0.0, "knowledge": False}
    made = [
        instances.create(
            db,
            account.id,
            "owner",
            {"name": name, **settings},
            now=utcnow(),
            models=[DEFAULT_CHAT],
            max_tokens_cap=4096,
        )
        for name in ("first", "second")
    ]
    long_id = long_conversation(db, account.id, user.id, made[0])
    browser_sign_in(page.context, db, linked_settings, user.id, account.id, live_kb.url)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_kb.url)

    # A long conversation opens at its latest message, the composer in view and focused.
    page.goto(f"{live_kb.url}/chat/{long_id}")
    assert page.evaluate(IN_VIEW, "#message")
    assert page.evaluate(IN_VIEW, "article.msg:last-child .msg-actions")
    assert page.evaluate("document.activeElement.id") == "message"

    # Every message copies its own text.
    page.locator("article.msg-user").last.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith("Question number 24:")

    # A new chat starts by typing; the instance picker remembers the last choice.
    page.goto(f"{live_kb.url}/chat")
    page.get_by_label("Instance").select_option(label=f"second ({DEFAULT_CHAT})")
    page.goto(f"{live_kb.url}/chat")
    assert page.get_by_label("Instance").input_value() == made[1].id
    box = page.get_by_label("Message")
    box.press_sequentially("Say hi.")
    box.press("Shift+Enter")
    box.press_sequentially("Just hi.")
    assert box.input_value() == "Say hi.\nJust hi."
    assert page.locator("article.msg").count() == 0  # Shift+Enter did not send
    box.press("Enter")
    page.wait_for_url("**/chat/conv_*")
    page.locator("article.msg-assistant .msg-meta").wait_for(timeout=60_000)
    new_id = page.url.rsplit("/", 1)[1]
    stored = chat.get(db, account.id, user.id, new_id)
    assert stored.instance_id == made[1].id
    assert stored.messages[0].content == "Say hi.\nJust hi."
    assert box.input_value() == ""

    # Regenerate keeps the first answer: 2/2, and "Previous version" goes back to it.
    first_answer = stored.messages[1]
    page.get_by_role("button", name="Regenerate answer").click()
    page.locator("article.msg-assistant .version-count").wait_for(timeout=60_000)
    assert page.locator("article.msg-assistant .version-count").inner_text() == "2/2"
    page.get_by_role("button", name="Previous version").click()
    page.wait_for_function(
        "() => document.querySelector('article.msg-assistant .version-count')"
        "?.textContent === '1/2'"
    )
    assert page.locator("article.msg-assistant").get_attribute("data-id") == first_answer.id
    assert page.get_by_role("button", name="Next version").is_enabled()

    # Editing the question (Enter saves) makes a second version of it; the first one,
    # with its two answers, is one click away.
    page.locator("article.msg-user").get_by_role("button", name="Edit").click()
    editing = page.get_by_label("Edit message")
    editing.fill("Say hello.")
    editing.press("Enter")
    page.locator("article.msg-user .version-count").wait_for(timeout=60_000)
    page.locator("article.msg-assistant .msg-meta").wait_for(timeout=60_000)
    assert page.locator("article.msg-user .version-count").inner_text() == "2/2"
    assert page.locator("article.msg-user .user-text").inner_text() == "Say hello."
    page.locator("article.msg-user").get_by_role("button", name="Previous version").click()
    page.wait_for_function(
        f"() => document.querySelector('article.msg-assistant')?.dataset.id === '{first_answer.id}'"
    )
    assert page.locator("article.msg-user .user-text").inner_text() == "Say hi.\nJust hi."

    # A paste too long for the instance is counted, refused before it is stored, and the
    # refusal and the text are still there after a reload.
    paste = "Every line of the annual report goes into this one message. " * 712
    box.fill(paste)
    counter = page.locator("#counter")
    page.wait_for_function("() => document.querySelector('#counter').textContent.includes('of')")
    assert f"{len(paste):,} characters" in counter.inner_text()  # 42,720: all of it
    assert "too long to send" in counter.inner_text()
    assert "context budget of 4,096 tokens" in counter.inner_text()
    box.press("Enter")
    error = page.locator("#chat-error")
    error.wait_for(state="visible", timeout=30_000)
    assert "too long for the instance" in error.inner_text()
    assert db["messages"].count_where("conversation_id = ?", [new_id]) == 5  # nothing stored
    page.reload()
    assert "too long for the instance" in page.locator("#chat-error").inner_text()
    assert len(page.get_by_label("Message").input_value()) == len(paste)

    # On a phone: no sideways scrolling, the composer in view, the list behind a button.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_kb.url}/chat/{long_id}")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate(IN_VIEW, "#message")
    assert page.locator(".conv-list").is_hidden()
    page.get_by_role("button", name="Conversations").click()
    assert page.locator(".conv-list").is_visible()
    page.goto(f"{live_kb.url}/chat")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate(IN_VIEW, "#instance") and page.evaluate(IN_VIEW, "#message")
    db.close()
