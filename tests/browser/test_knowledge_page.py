"""The Knowledge page in the real browser: upload, watch ingestion, search, remove."""

import pytest
from browser_support import browser_sign_in

from appliance.accounts import service as accounts
from appliance.clock import utcnow
from appliance.db import open_db

pytestmark = [pytest.mark.browser, pytest.mark.inference]

FILES = {
    "espresso.md": b"# Espresso\n\nUse 18 grams of coffee for a double shot.\n",
    "bicycle.html": (
        b"<html><body><h1>Bicycle</h1><p>Oil the chain every 300 kilometres.</p></body></html>"
    ),
    "plants.txt": b"Water the fern twice a week and keep it out of direct sunlight.\n",
}


def test_upload_search_and_remove(live_kb, page, linked_settings, tmp_path):
    db = open_db(linked_settings)
    user, account = accounts.create_user(db, "kb@example.com", utcnow(), account_name="KB")
    browser_sign_in(page.context, db, linked_settings, user.id, account.id, live_kb.url)
    db.close()
    paths = []
    for name, data in FILES.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))

    page.goto(live_kb.url + "/knowledge")
    page.get_by_role("heading", name="Knowledge").wait_for()
    page.set_input_files("#upload-input", paths)
    rows = page.locator("#documents tbody tr")
    for name in FILES:
        row = rows.filter(has_text=name)
        row.locator(".status-ready").wait_for(timeout=60_000)

    page.get_by_label("Search your documents").fill("how often should I oil the chain")
    page.get_by_role("button", name="Search").click()
    first = page.locator("#search-hits li").first
    first.wait_for()
    assert "300 kilometres" in first.inner_text()
    assert "bicycle.html" in first.inner_text()

    page.once("dialog", lambda dialog: dialog.accept())
    rows.filter(has_text="bicycle.html").get_by_role("button", name="Remove").click()
    rows.filter(has_text="bicycle.html").wait_for(state="detached")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function(
        "() => !document.querySelector('#search-hits').innerText.includes('300 kilometres')"
    )
    assert "bicycle.html" not in page.locator("#search-hits").inner_text()
    assert rows.count() == 2


def test_a_folder_goes_up_with_one_overall_progress_bar(live_kb, page, linked_settings, tmp_path):
    import io
    import zipfile

    db = open_db(linked_settings)
    user, account = accounts.create_user(db, "bulk@example.com", utcnow(), account_name="Bulk")
    browser_sign_in(page.context, db, linked_settings, user.id, account.id, live_kb.url)
    db.close()
    folder = tmp_path / "team-drive"
    (folder / "policies").mkdir(parents=True)
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("leave.md", b"# Leave\n\nStaff get 25 days of annual leave.")
        zf.writestr("sick.txt", b"Report sick leave to your manager before 9am.")
    (folder / "policies" / "hr.zip").write_bytes(buffer.getvalue())
    (folder / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")

    page.goto(live_kb.url + "/knowledge")
    page.set_input_files("#folder-input", folder)
    page.locator("#bulk-note", has_text="5 of 5 documents indexed").wait_for(timeout=90_000)
    bar = page.locator("#bulk-bar")
    assert bar.get_attribute("value") == bar.get_attribute("max")
    assert "clip.mp4: not a supported type" in page.locator("#bulk-refused").inner_text()
    rows = page.locator("#documents tbody tr")
    for name in ("espresso.md", "bicycle.html", "plants.txt", "leave.md", "sick.txt"):
        rows.filter(has_text=name).locator(".status-ready").wait_for()
