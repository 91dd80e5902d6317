"""Render the main pages at desktop and phone width into docs/screenshots/ (PNG).

A throwaway data dir gets a seeded demo team (``seed``: an owner who is the operator, an
admin, a member, a document, a conversation, keys, an open invite); the real web service
serves it on a free port and Debian's Chromium, driven by Playwright, takes the pictures.
No model is needed: the pages show what the database holds.

    .venv/bin/python scripts/screenshots.py            # into docs/screenshots/
    .venv/bin/python scripts/screenshots.py --out /tmp/shots

tests/browser/test_phone.py uses ``seed`` too, and tests/browser/test_screenshots.py runs
this script into a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
#: (file name, path, who is signed in); each is taken at both widths.
PAGES = (
    ("dashboard", "/", "owner"),
    ("chat", "/chat/{conversation}", "owner"),
    ("knowledge", "/knowledge", "owner"),
    ("settings", "/settings", "owner"),
)
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}
ANSWER = (
    "Our practice is open **Monday to Friday, 8:00-18:00**, and on Saturdays from 9:00 to "
    "13:00.\n\nEmergency appointments are possible every day: call the main number "
    "and choose option 2."
)
HOURS = (
    b"# Opening hours\n\nMonday to Friday 8:00-18:00. Saturday 9:00-13:00.\n\n"
    b"Emergencies: call the main number and choose option 2.\n"
)


def seed(settings) -> dict[str, str]:
    """A demo team in ``settings``' (initialised) data dir; returns the session token of
    each person (``owner``, ``admin``, ``member``) and the ``conversation`` id."""
    from appliance.accounts import service as accounts
    from appliance.auth import service as auth
    from appliance.chat import service as chat
    from appliance.db import open_db
    from appliance.instances import service as instances
    from appliance.knowledge import service as knowledge

    now = datetime.now(UTC)
    db = open_db(settings)
    try:
        owner, team = accounts.create_user(
            db, "maria@example.com", now, account_name="Harbour Dental", operator=True
        )
        accounts.save_profile(
            db,
            settings,
            team.id,
            "owner",
            {
                "business_name": "Harbour Dental",
                "intended_use": "Answering patients' questions about appointments and care",
                "tone": "warm",
                "age_confirmed": "on",
            },
            now,
        )
        people = {"owner": owner}
        for role, email in (("admin", "sam@example.com"), ("member", "lee@example.com")):
            person = accounts.ensure_user(db, email, now)
            accounts.add_member(db, team.id, person.id, role, now)
            people[role] = person
        assistant = instances.create(
            db,
            team.id,
            "owner",
            {"name": "assistant"},
            models=[settings.inference.chat_model],
            max_tokens_cap=settings.inference.max_tokens,
            now=now,
        )
        knowledge.add_document(
            db, settings, team.id, owner.id, "opening-hours.md", io.BytesIO(HOURS), now
        )
        conversation_id = chat.store_exchange(
            db,
            team.id,
            owner.id,
            assistant,
            [{"role": "user", "content": "When are you open, and what about emergencies?"}],
            ANSWER,
            now,
            conversation_id=None,
            passages=[],
            usage={"prompt_tokens": 412, "completion_tokens": 58},
        )
        chat.rename(db, team.id, owner.id, conversation_id, "Opening hours", now)
        auth.create_key(
            db, user_id=owner.id, account_id=team.id, name="website widget",
            scope="inference", now=now, instance_id=assistant.id,
        )  # fmt: skip
        accounts.invite(db, team.id, "owner", owner.id, "alex@example.com", "member", now)
        tokens = {
            who: auth.create_session(db, settings, person.id, team.id, now)
            for who, person in people.items()
        }
    finally:
        db.close()
    return {**tokens, "conversation": conversation_id}


def take(out: Path) -> list[Path]:
    """Seed a throwaway data dir, serve it and write the PNGs into ``out``."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from common import start_web  # scripts/bench/common.py

    from appliance.cli import initialise
    from appliance.config import Settings

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(data_dir=Path(tmp) / "data", environ={}, overrides={})
        initialise(settings)
        seeded = seed(settings)
        web = start_web(settings.paths.data_dir)
        url = web.url
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                for width_name, (width, height) in WIDTHS.items():
                    context = browser.new_context(
                        viewport={"width": width, "height": height},
                        color_scheme="light",
                        reduced_motion="reduce",
                    )
                    page = context.new_page()
                    for name, path, who in PAGES:
                        context.clear_cookies()
                        context.add_cookies([{"name": "session", "value": seeded[who], "url": url}])
                        page.goto(url + path.format(**seeded))
                        page.wait_for_load_state("networkidle")
                        target = out / f"{name}-{width_name}.png"
                        page.screenshot(path=str(target))
                        written.append(target)
                    context.close()
                browser.close()
        finally:
            web.stop()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    for path in take(args.out):
        print(f"{path}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
