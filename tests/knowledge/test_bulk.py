"""Bulk import: a ZIP of documents through the upload API, and `appliance kb import DIR`.

Real archives made here, the real app with its queue, the real CLI in a child process and
the real Huey queue the worker would drain.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import manage_client

from appliance.accounts import service as accounts
from appliance.knowledge import service as knowledge
from appliance.tasks import create_queue

pytestmark = pytest.mark.inference

DOCS = {
    "manuals/boiler.md": b"# Boiler\n\nBleed the radiators every autumn; the boiler runs 70 C.",
    "manuals/lift.txt": b"The lift in block C is serviced every March by Kone.",
    "notes/deep/tea.html": b"<html><body><p>Green tea steeps two minutes.</p></body></html>",
}


def archive(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def upload(client, name: str, data: bytes):
    return client.post("/api/documents", files={"file": (name, io.BytesIO(data))})


def test_a_zip_adds_every_document_in_it(linked_settings, db, clock):
    members = {
        **DOCS,
        "photo.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        ".DS_Store": b"\0\0\0\1Bud1",
        "__MACOSX/manuals/._boiler.md": b"\0\5\26\7",
        "empty/": b"",
    }
    with (
        manage_client(linked_settings, db, clock, "a@example.com", "A") as a,
        manage_client(linked_settings, db, clock, "b@example.org", "B") as b,
    ):
        response = upload(a, "handbook.zip", archive(members))
        assert response.status_code == 202, response.text
        results = response.json()
        added = {r["filename"]: r for r in results if "id" in r}
        assert set(added) == {"boiler.md", "lift.txt", "tea.html"}
        (refused,) = [r for r in results if "error" in r]
        assert refused["filename"] == "photo.png" and ".png are not supported" in refused["error"]
        statuses = {d["filename"]: d["status"] for d in a.get("/api/documents").json()}
        assert statuses == {"boiler.md": "ready", "lift.txt": "ready", "tea.html": "ready"}
        hit = a.get("/api/search", params={"q": "when is the lift serviced"}).json()["hits"][0]
        assert "Kone" in hit["text"]
        # The same archive again: every document is a duplicate, nothing indexed twice.
        again = upload(a, "copy.zip", archive(DOCS)).json()
        assert all(r["duplicate"] for r in again)
        # Account B sees none of it.
        assert b.get("/api/documents").json() == []
        assert b.get(f"/api/documents/{added['lift.txt']['id']}").status_code == 404
        assert b.get("/api/search", params={"q": "lift serviced Kone"}).json()["hits"] == []


@pytest.mark.parametrize(
    ("members", "compression", "words"),
    [
        ({"bomb.txt": b"0" * (3 * 1024 * 1024)}, zipfile.ZIP_DEFLATED, "compressed more than"),
        ({"../../escape.txt": b"hello"}, zipfile.ZIP_STORED, "unsafe path"),
        ({f"n{i}.txt": b"x" for i in range(1001)}, zipfile.ZIP_STORED, "too many files"),
    ],
)
def test_an_archive_over_the_caps_is_refused_whole(
    linked_settings, db, clock, members, compression, words
):
    with manage_client(linked_settings, db, clock, "a@example.com", "A") as a:
        response = upload(a, "bad.zip", archive(members, compression))
        assert response.status_code == 400
        assert words in response.json()["error"]["message"]
        assert "ZIP archive" in response.json()["error"]["message"]
        assert a.get("/api/documents").json() == []
    assert [p.name for p in (linked_settings.paths.files / a.account_id).iterdir()] == []


def test_kb_import_reads_a_folder_into_one_account(linked_settings, db, clock, tmp_path):
    folder = tmp_path / "shared-drive"
    for name, data in DOCS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    wifi = {"faq/wifi.md": b"# Wifi\n\nThe password is on the router."}
    (folder / "more.zip").write_bytes(archive(wifi))
    (folder / "movie.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_bytes(b"[core]")
    _, account_a = accounts.create_user(db, "a@example.com", clock(), account_name="A")
    _, account_b = accounts.create_user(db, "b@example.org", clock(), account_name="B")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = str(linked_settings.paths.data_dir)
    command = ["kb", "import", str(folder), "--account", account_a.id]
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # one file was not added
    assert "queued 4 document(s)" in result.stdout
    assert "movie.mp4" in result.stderr and ".mp4 are not supported" in result.stderr
    docs = knowledge.documents(db, account_a.id)
    assert sorted(d.filename for d in docs) == ["boiler.md", "lift.txt", "tea.html", "wifi.md"]
    assert {d.status for d in docs} == {"queued"}
    assert knowledge.documents(db, account_b.id) == []
    # The worker's queue holds their tasks: run them as the worker would.
    queue = create_queue(linked_settings)
    while (task := queue.huey.dequeue()) is not None:
        queue.huey.execute(task)
    assert {d.status for d in knowledge.documents(db, account_a.id)} == {"ready"}
    assert knowledge.audit(db, linked_settings) == []


def test_a_damaged_member_is_reported_and_the_rest_added(linked_settings, db, clock):
    members = {"good.txt": b"The lift was serviced.", "bad.txt": b"x" * 5000}
    data = bytearray(archive(members, zipfile.ZIP_STORED))
    at = data.find(b"x" * 100)  # bad.txt's data (stored): its checksum no longer matches
    data[at : at + 100] = b"y" * 100
    with manage_client(linked_settings, db, clock, "a@example.com", "A") as a:
        results = upload(a, "mixed.zip", bytes(data)).json()
    assert [r["filename"] for r in results if "id" in r] == ["good.txt"]
    assert [r for r in results if "error" in r] == [
        {"filename": "bad.txt", "error": "This file is damaged in the ZIP archive."}
    ]
