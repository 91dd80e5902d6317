"""Data export: one ZIP with every item of an account that touches every feature, built
in the background, downloadable by its owner only, until it expires."""

import io
import json
import zipfile
from datetime import timedelta

from litestar.testing import TestClient
from privacy_support import populate, request_erasure
from signin_support import sign_in

from appliance.accounts import service as accounts
from appliance.chat import service as chat
from appliance.chat.compose import Composed
from appliance.knowledge import service as knowledge
from appliance.persona import voice
from appliance.personal import ACCOUNT_COLUMNS, tables
from appliance.privacy import erasure, retention

CANARY = "exportcanary4417"


def account_tables(db) -> set[str]:
    names = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
    found = set()
    for name in names:
        try:
            columns = {r[1] for r in db.execute(f"pragma table_info('{name}')")}
        except Exception:  # noqa: S112 - virtual tables whose module is not loaded
            continue
        if columns & ACCOUNT_COLUMNS:
            found.add(name)
    return found


def export_zip(client) -> zipfile.ZipFile:
    started = client.post("/api/me/export")
    assert started.status_code == 202, started.text
    status = client.get("/api/me/export").json()
    assert status["status"] == "ready", status
    assert status["progress"] == status["total"] > 0
    download = client.get(status["download_url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(download.content))


def test_owner_export_holds_every_item(settings, db, clock, app):
    world = populate(db, settings, clock(), CANARY)
    with TestClient(app) as client:
        sign_in(client, settings, "owner@example.com")
        archive = export_zip(client)
    names = set(archive.namelist())
    manifest = json.loads(archive.read("manifest.json"))
    data = {n[5:-5]: json.loads(archive.read(n)) for n in names if n.startswith("data/")}
    # Every table with account data is exported, or its domain says why not.
    registered = tables()
    exported = {t.name for t in registered if t.export}
    for table in account_tables(db):
        rule = next((t for t in registered if t.name == table), None)
        assert rule is not None, f"{table} is claimed by no domain (appliance.personal)"
        if rule.export:
            assert table in data, f"{table} missing from the export"
    assert set(manifest["tables"]) == exported & set(data)
    # One of everything the fixture made.
    assert data["profiles"][0]["business_name"] == f"Bakery {CANARY}"
    assert len(data["system_prompts"]) == 1 and data["egress_log"][0]["service"] == "anthropic"
    assert [d["id"] for d in data["documents"]] == [world.document_id]
    assert [c["name"] for c in data["collections"]] == [f"Recipes {CANARY}"]
    assert [m["document_id"] for m in data["collection_documents"]] == [world.document_id]
    assert [s["id"] for s in data["voice_samples"]] == [world.sample_id]
    assert [i["id"] for i in data["instances"]] == [world.instance.id]
    assert [i["email"] for i in data["invites"]] == ["invitee@example.com"]
    assert {m["role"] for m in data["memberships"]} == {"owner", "member"}
    assert [u["email"] for u in data["users"]] == ["owner@example.com"]
    assert data["accounts"][0]["id"] == world.account.id
    assert [c["id"] for c in data["conversations"]] == [world.conversation_id]
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert [e["amount_microusd"] for e in data["ledger_entries"]] == [10_000_000]
    assert data["billing_accounts"][0]["balance_microusd"] == 10_000_000
    # API keys: metadata only.
    assert data["api_keys"] and all("key_hash" not in k for k in data["api_keys"])
    assert "sessions" not in data and "otp_codes" not in data
    # Originals, byte for byte, and the conversation as Markdown.
    doc = next(n for n in names if n.startswith(f"documents/{world.document_id}"))
    original = knowledge.account_dir(settings, world.account.id) / world.document_id
    assert archive.read(doc) == original.read_bytes()
    sample = next(n for n in names if n.startswith(f"voice_samples/{world.sample_id}"))
    path = voice.sample_path(settings, world.account.id, world.sample_id)
    assert archive.read(sample) == path.read_bytes()
    markdown = archive.read(f"conversations/{world.conversation_id}.md").decode()
    assert f"What is {CANARY}?" in markdown and "## Assistant" in markdown


def test_member_export_is_their_own_data_only(settings, db, clock, app):
    populate(db, settings, clock(), CANARY)
    with TestClient(app) as client:
        sign_in(client, settings, "member@example.com")
        archive = export_zip(client)
    data = {
        n[5:-5]: json.loads(archive.read(n)) for n in archive.namelist() if n.startswith("data/")
    }
    assert [u["email"] for u in data["users"]] == ["member@example.com"]
    assert data.get("documents", []) == [] and data.get("profiles", []) == []
    assert data.get("conversations", []) == []  # the owner's conversation is not theirs
    assert CANARY not in json.dumps(data)


def test_export_is_private_and_expires(settings, db, clock, app):
    populate(db, settings, clock(), CANARY)
    accounts.create_user(db, "stranger@example.org", clock(), account_name="Elsewhere")
    with TestClient(app) as owner, TestClient(app) as member, TestClient(app) as stranger:
        sign_in(owner, settings, "owner@example.com")
        sign_in(member, settings, "member@example.com")
        sign_in(stranger, settings, "stranger@example.org")
        owner.post("/api/me/export")
        status = owner.get("/api/me/export").json()
        for other in (member, stranger):
            assert other.get(f"/api/me/export/{status['id']}").status_code == 404
            assert other.get(status["download_url"]).status_code == 404
        clock.advance(hours=settings.privacy.export_ttl_hours, seconds=1)
        sign_in(owner, settings, "owner@example.com")  # the old session has ended too
        assert owner.get(status["download_url"]).status_code == 404
    path = settings.paths.data_dir / "exports" / f"{status['id']}.zip"
    assert path.exists()
    result = retention.run_job(db, settings, "exports", clock() + timedelta(seconds=1))
    assert result.deleted == 1 and not path.exists()


def test_every_version_of_a_message_is_exported_and_erased(settings, db, clock, app):
    """Regenerating keeps the earlier answer as a version: the export holds both (rows and
    Markdown), and erasing the account leaves neither."""
    world = populate(db, settings, clock(), CANARY)
    owner = world.owner.id
    conversation = chat.get(db, world.account.id, owner, world.conversation_id)
    question, first = conversation.messages
    turn = chat.Turn(conversation, world.instance, question, 1, Composed({}, [], 0, 0))
    second = f"Another answer about {CANARY}."
    chat.finish_turn(
        db, turn, second, clock(), finish_reason="stop", prompt_tokens=5, completion_tokens=4
    )
    shown = chat.get(db, world.account.id, owner, world.conversation_id)
    assert [m.content for m in shown.messages] == [question.content, second]
    assert shown.versions[shown.messages[1].id] == [first.id, shown.messages[1].id]
    with TestClient(app) as client:
        sign_in(client, settings, "owner@example.com")
        archive = export_zip(client)
    rows = json.loads(archive.read("data/messages.json"))
    assert sorted(m["content"] for m in rows) == sorted([question.content, first.content, second])
    markdown = archive.read(f"conversations/{world.conversation_id}.md").decode()
    assert markdown.index(second) < markdown.index("## Earlier versions")
    assert markdown.index("## Earlier versions") < markdown.index(first.content)
    # Erasure takes every version (the messages of the person's conversations, all of them).
    request_erasure(db, settings, world.account.id, clock())
    receipt = erasure.erase_account(db, settings, world.account.id, clock())
    assert receipt.body["counts"]["messages"] == 3
    assert db.execute("select count(*) from messages").fetchone()[0] == 0
    found = db.execute("select count(*) from messages_fts where messages_fts match ?", [CANARY])
    assert found.fetchone()[0] == 0
