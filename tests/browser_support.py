"""Chromium in tests: where it is, one instance shared by consecutive browser tests, and
helpers for signing a browser in and asking a question in the chat page.

Imported by test modules anywhere under tests/ (pytest puts this folder on ``sys.path``
for tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

from appliance.config import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: The Chromium that consecutive browser tests share: {"playwright": ..., "browser": ...}.
_chromium: dict[str, Any] = {}


def shared_chromium():
    """The shared Chromium, launched if none runs. It stays open until ``close_chromium``
    (tests/conftest.py calls it after the last of a run of tests that use it): Playwright's
    sync API keeps an event loop running while it is open, which would break asyncio.run()
    in later, unrelated tests. Each test opens contexts of its own."""
    if not _chromium:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        try:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        except BaseException:
            playwright.stop()
            raise
        _chromium.update(playwright=playwright, browser=launched)
    return _chromium["browser"]


def close_chromium() -> None:
    if _chromium:
        _chromium.pop("browser").close()
        _chromium.pop("playwright").stop()


def browser_sign_in(context, db, settings: Settings, user_id: str, account_id: str, url: str):
    """Give the browser ``context`` a session of ``user_id`` in ``account_id`` at ``url``."""
    from appliance.auth import service as auth
    from appliance.clock import utcnow

    token = auth.create_session(db, settings, user_id, account_id, utcnow())
    context.add_cookies([{"name": "session", "value": token, "url": url}])


def ask_with_sources(page, url: str, question: str):
    """Ask ``question`` in a new chat at ``url``; once answered, its sources (opened)."""
    page.goto(url + "/chat")
    page.get_by_label("Message").fill(question)
    page.get_by_role("button", name="Send").click()
    page.wait_for_url("**/chat/conv_*")
    answer = page.locator("article.msg-assistant").first
    answer.locator(".msg-meta").wait_for(timeout=60_000)
    sources = answer.locator("details.sources")
    if sources.get_attribute("open") is None:  # opened by itself only when [n] was cited
        sources.locator("summary").click()
    return sources
