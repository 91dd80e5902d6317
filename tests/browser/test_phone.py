"""Phones: every page at 390x844 without sideways scrolling, for each kind of person
(signed out, member, admin, owner who is also the operator); the header is one row with a
menu button, and the chat's conversation list is a drawer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from appliance import firstrun
from appliance.db import open_db
from appliance.web import create_app

pytestmark = pytest.mark.browser
PHONE = {"width": 390, "height": 844}
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshots.py"
#: Every page (GET route answering HTML), with the seeded ids filled in.
SIGNED_IN = (
    "/",
    "/chat",
    "/chat/{conversation}",
    "/knowledge",
    "/instances",
    "/billing",
    "/settings",
    "/settings/data",
    "/settings/persona",
    "/onboarding",
    "/invites",
    "/privacy",
    "/privacy/accept",
    "/privacy/versions/1",
    "/admin",
    "/no-such-page",
)
SIGNED_OUT = ("/", "/login", "/privacy", "/no-such-page")
#: Routes that are not pages a person reads (data, files, probes, the API).
NOT_PAGES = ("/api/", "/v1/", "/static/", "/schema", "/healthz", "/readyz", ".csv")


def load_seed():
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seed


def test_the_lists_cover_every_page(settings):
    app = create_app(settings)
    routes = {
        route.path
        for route in app.routes
        if "GET" in getattr(route, "methods", ()) and not any(p in route.path for p in NOT_PAGES)
    }

    def stem(path: str) -> str:
        return path.split("{")[0].rstrip("/0123456789") or "/"

    visited = (*SIGNED_IN, *SIGNED_OUT, "/setup", "/login/verify")
    listed = {stem(path) for path in visited}
    missing = {path for path in routes if stem(path) not in listed}
    assert not missing, f"pages missing from the phone test: {sorted(missing)}"


def overflow(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def test_no_page_scrolls_sideways_on_a_phone(live_web, browser, settings):
    base = live_web.url
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    wide = []

    def check(who: str, path: str) -> None:
        page.goto(base + path)
        width, inner = overflow(page)
        if width > inner:
            wide.append(f"{who} {path}: {width}px")

    db = open_db(settings)
    token = firstrun.setup_token(settings, db)
    db.close()
    check("signed out", f"/setup?token={token}")
    seeded = load_seed()(settings)
    for path in SIGNED_OUT:
        check("signed out", path)
    page.goto(base + "/login")
    page.get_by_label("Email address").fill("lee@example.com")
    page.get_by_role("button", name="Send me a code").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    check("signed out", "/login/verify")
    for who in ("member", "admin", "owner"):
        context.clear_cookies()
        context.add_cookies([{"name": "session", "value": seeded[who], "url": base}])
        for path in SIGNED_IN:
            check(who, path.format(**seeded))
    context.close()
    assert not wide, "pages wider than the phone:\n" + "\n".join(wide)


def test_phone_header_is_one_row_with_a_menu_and_chat_has_a_drawer(live_web, browser, settings):
    seeded = load_seed()(settings)
    context = browser.new_context(viewport=PHONE)
    context.add_cookies([{"name": "session", "value": seeded["owner"], "url": live_web.url}])
    page = context.new_page()
    page.goto(live_web.url + "/settings")
    header = page.locator("header.top")
    assert header.bounding_box()["height"] < 64  # one row (three rows before)
    nav_link = page.get_by_role("link", name="Knowledge")
    assert not nav_link.is_visible()
    menu = page.get_by_role("button", name="Menu")
    assert menu.get_attribute("aria-expanded") == "false"
    menu.click()
    assert menu.get_attribute("aria-expanded") == "true"
    assert nav_link.is_visible() and page.get_by_role("button", name="Sign out").is_visible()
    page.keyboard.press("Escape")
    assert not nav_link.is_visible()

    page.goto(live_web.url + f"/chat/{seeded['conversation']}")
    conversations = page.get_by_role("link", name="Opening hours")
    assert not conversations.is_visible()
    assert page.locator(".msg-assistant").first.is_visible()  # the messages come first
    drawer = page.get_by_role("button", name="Conversations")
    drawer.click()
    assert conversations.is_visible()
    assert drawer.get_attribute("aria-expanded") == "true"
    page.keyboard.press("Escape")
    assert not conversations.is_visible()

    # At desktop width nothing is hidden behind buttons.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(live_web.url + "/settings")
    assert not menu.is_visible() and page.get_by_role("link", name="Knowledge").is_visible()
    context.close()
