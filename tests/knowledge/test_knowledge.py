"""The knowledge base end to end: upload, ingestion with the real models, search, deletion."""

import hashlib
import io

import pytest
from litestar.testing import TestClient
from signin_support import api_key

from appliance.accounts import service as accounts
from appliance.db import open_db
from appliance.knowledge import service as knowledge
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.inference

CANARY = "zebracanary7731"
GUIDE = b"""# Espresso guide

## Grinding
Grind the beans fine, like table salt. A burr grinder gives an even grind.

## Brewing
Use 18 grams of coffee for a double shot. Extraction should take 25 to 30 seconds.
"""
NOTES = (
    b"<html><body><h1>Bicycle care</h1><p>Oil the chain every 300 kilometres.</p>"
    b"<script>alert('no')</script><p>Check tyre pressure weekly.</p></body></html>"
)


@pytest.fixture
def kb(linked_settings, db, clock):
    """A signed-in owner's client on an app whose tasks run inside the request."""
    settings = linked_settings
    queue = create_queue(settings, immediate=True)
    app = create_app(settings, clock=clock, queue=queue)
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    secret = api_key(db, owner, account, "manage", clock())
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {secret}"
        client.settings = settings
        client.account = account
        client.app_ = app
        yield client


def upload(client, name, data):
    return client.post("/api/documents", files={"file": (name, io.BytesIO(data))})


def other_client(kb, db, clock, email="b@example.org"):
    user, account = accounts.create_user(db, email, clock(), account_name="B")
    secret = api_key(db, user, account, "manage", clock())
    client = TestClient(kb.app_)
    client.headers["Authorization"] = f"Bearer {secret}"
    return client


def test_upload_ingest_search(kb):
    first = upload(kb, "espresso.md", GUIDE)
    assert first.status_code == 202
    body = first.json()
    assert body["status"] == "queued" and not body["duplicate"]
    doc = kb.get(f"/api/documents/{body['id']}").json()
    assert doc["status"] == "ready", doc
    assert doc["chunks_total"] == doc["chunks_done"] > 0
    assert doc["kind"] == "md"
    result = kb.get("/api/search", params={"q": "how long should extraction take"}).json()
    assert result["legs"] == ["bm25", "vector"] and result["vector_unavailable"] is False
    assert "25 to 30 seconds" in result["hits"][0]["text"]
    assert result["hits"][0]["heading"] == "Espresso guide > Brewing"
    assert result["hits"][0]["document_id"] == body["id"]


def test_several_files_and_html(kb):
    response = kb.post(
        "/api/documents",
        files=[
            ("file", ("guide.md", io.BytesIO(GUIDE))),
            ("file", ("bike.html", io.BytesIO(NOTES))),
        ],
    )
    assert response.status_code == 202
    assert [item["filename"] for item in response.json()] == ["guide.md", "bike.html"]
    hits = kb.get("/api/search", params={"q": "chain oil"}).json()["hits"]
    assert hits and "300 kilometres" in hits[0]["text"]
    everything = " ".join(
        h["text"] for h in kb.get("/api/search", params={"q": "alert"}).json()["hits"]
    )
    assert "alert('no')" not in everything


def test_duplicate_is_reported_not_indexed_twice(kb, db):
    first = upload(kb, "a.md", GUIDE).json()
    second = upload(kb, "renamed.md", GUIDE)
    assert second.status_code == 202
    assert second.json()["duplicate"] is True and second.json()["id"] == first["id"]
    assert len(kb.get("/api/documents").json()) == 1


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("picture.txt", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"),
        ("empty.txt", b"", "empty"),
        ("report.pdf", b"just some text, not a PDF", "PDF"),
        ("garbage.txt", bytes(range(256)) * 8, ""),
        ("archive.docx", b"PK\x03\x04" + b"\0" * 100, ""),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(kb, db, name, data, message):
    response = upload(kb, name, data)
    assert response.status_code == 400, response.text
    assert message.lower() in response.json()["error"]["message"].lower()
    assert kb.get("/api/documents").json() == []
    files = kb.settings.paths.files / kb.account.id
    assert not files.exists() or list(files.iterdir()) == []


def test_size_limit_is_413_before_storing(kb, clock, db):
    from conftest import make_settings

    small = make_settings(
        kb.settings.paths.data_dir,
        **{"knowledge.max_upload_mb": 1, "inference.url": kb.settings.inference.url},
    )
    app = create_app(small, clock=clock, queue=create_queue(small, immediate=True))
    with TestClient(app) as client:
        client.headers.update(kb.headers)
        response = client.post(
            "/api/documents", files={"file": ("big.txt", io.BytesIO(b"a " * 1_100_000))}
        )
    assert response.status_code == 413
    assert "1 MB" in response.json()["error"]["message"]
    assert kb.get("/api/documents").json() == []


def test_quota_is_413_with_what_remains(kb, clock):
    from conftest import make_settings

    tight = make_settings(
        kb.settings.paths.data_dir,
        **{"knowledge.quota_mb": 1, "inference.url": kb.settings.inference.url},
    )
    app = create_app(tight, clock=clock, queue=create_queue(tight, immediate=True))
    with TestClient(app) as client:
        client.headers.update(kb.headers)
        # 700 kB that counts against the quota (its ingestion fails fast: no text in it).
        assert upload(client, "a.txt", b" \n" * 350_000).status_code == 202
        refused = upload(client, "b.txt", b"other words " * 40_000)
    assert refused.status_code == 413
    assert "remain" in refused.json()["error"]["message"]


def test_delete_leaves_nothing_behind(kb, db):
    secret_doc = GUIDE + f"\nThe secret word is {CANARY}.\n".encode()
    doc = upload(kb, "secret.md", secret_doc).json()
    assert kb.get("/api/search", params={"q": CANARY}).json()["hits"]
    assert kb.delete(f"/api/documents/{doc['id']}").status_code == 204
    assert kb.get(f"/api/documents/{doc['id']}").status_code == 404
    assert kb.get("/api/search", params={"q": CANARY}).json()["hits"] == []
    assert knowledge.audit(db, kb.settings) == []
    # The deletion is receipted: counts and the file's hash, no content.
    from appliance.privacy import receipts

    (receipt,) = [r for r in receipts.receipts(db) if doc["id"] in r.request]
    assert receipt.body["counts"]["documents"] == 1 and receipt.body["counts"]["chunks"] >= 1
    assert receipt.body["files"] == [
        {"kind": "document", "sha256": hashlib.sha256(secret_doc).hexdigest()}
    ]
    assert receipts.verify(db) == []
    db.execute("pragma wal_checkpoint(TRUNCATE)")
    needle = CANARY.encode()
    for path in kb.settings.paths.data_dir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), f"canary left in {path}"


def test_another_account_cannot_see_or_touch_documents(kb, db, clock):
    doc = upload(kb, "guide.md", GUIDE).json()
    other = other_client(kb, db, clock)
    assert other.get(f"/api/documents/{doc['id']}").status_code == 404
    assert other.delete(f"/api/documents/{doc['id']}").status_code == 404
    assert other.post(f"/api/documents/{doc['id']}/retry").status_code == 404
    assert other.get("/api/documents").json() == []
    assert other.get("/api/search", params={"q": "espresso grind beans"}).json()["hits"] == []
    assert kb.get(f"/api/documents/{doc['id']}").json()["status"] == "ready"


def test_interrupted_ingestion_is_finished_on_restart(kb, db):
    doc = upload(kb, "guide.md", GUIDE).json()
    total = kb.get(f"/api/documents/{doc['id']}").json()["chunks_total"]
    # As if the worker died half-way: status back to embedding, some chunks missing.
    db.execute(
        "update documents set status = 'embedding', chunks_done = 1 where id = ?", [doc["id"]]
    )
    assert [d.id for d in knowledge.unfinished(db)] == [doc["id"]]
    queue = create_queue(kb.settings, immediate=True)
    queue.ingest_document(doc["id"])
    again = kb.get(f"/api/documents/{doc['id']}").json()
    assert again["status"] == "ready" and again["chunks_done"] == total
    assert db.execute("select count(*) from chunks").fetchone()[0] == total
    assert knowledge.audit(db, kb.settings) == []


def test_failed_document_can_be_retried(kb, db):
    doc = upload(kb, "blank.md", b"\n\n   \n").json()
    failed = kb.get(f"/api/documents/{doc['id']}").json()
    assert failed["status"] == "failed" and failed["error"]
    retried = kb.post(f"/api/documents/{doc['id']}/retry")
    assert retried.status_code == 202
    assert kb.get(f"/api/documents/{doc['id']}").json()["status"] == "failed"
    ready = upload(kb, "guide.md", GUIDE).json()
    assert kb.post(f"/api/documents/{ready['id']}/retry").status_code == 400


def test_search_falls_back_to_bm25_when_inference_is_down(kb, db, clock):
    upload(kb, "guide.md", GUIDE)
    from conftest import make_settings

    down = make_settings(kb.settings.paths.data_dir, **{"inference.url": "http://127.0.0.1:9"})
    with TestClient(create_app(down, clock=clock, queue=create_queue(down, immediate=True))) as c:
        c.headers.update(kb.headers)
        result = c.get("/api/search", params={"q": "burr grinder"}).json()
    assert result["legs"] == ["bm25"]
    assert result["vector_unavailable"] is True  # says so, for the page and API clients
    assert "burr grinder" in result["hits"][0]["text"]


def test_bad_search_requests(kb):
    assert kb.get("/api/search", params={"q": ""}).status_code == 400
    assert kb.get("/api/search", params={"q": "x", "k": 500}).status_code == 400
    assert kb.get("/api/search", params={"q": 'AND OR NOT "( *'}).status_code == 200


def test_audit_finds_orphans(kb, db):
    doc = upload(kb, "guide.md", GUIDE).json()
    (kb.settings.paths.files / kb.account.id / "doc_stray").write_bytes(b"x")
    problems = knowledge.audit(db, kb.settings)
    assert any("file without a document" in p for p in problems)
    (kb.settings.paths.files / kb.account.id / "doc_stray").unlink()
    # A row deleted behind the store's back: the chunks cascade, the virtual tables can't.
    db.execute("delete from documents where id = ?", [doc["id"]])
    problems = knowledge.audit(db, kb.settings)
    assert any("vectors without a chunk" in p for p in problems)
    assert any("file without a document" in p for p in problems)


def test_reindex_rebuilds_everything(kb, db):
    doc = upload(kb, "guide.md", GUIDE).json()
    ids = knowledge.reindex(db)
    assert ids == [doc["id"]]
    assert db.execute("select count(*) from chunks").fetchone()[0] == 0
    queue = create_queue(kb.settings, immediate=True)
    queue.ingest_document(doc["id"])
    assert kb.get(f"/api/documents/{doc['id']}").json()["status"] == "ready"
    assert kb.get("/api/search", params={"q": "double shot"}).json()["legs"] == ["bm25", "vector"]


def test_knowledge_page_needs_sign_in(client):
    response = client.get("/knowledge", follow_redirects=False)
    assert response.status_code in (302, 303)


def test_open_db_in_new_process_sees_documents(kb):
    db = open_db(kb.settings)
    try:
        assert db.execute("select count(*) from documents").fetchone()[0] == 0
    finally:
        db.close()
