"""Account deletion: locked at once by the owner (fresh code) or an operator, erased by the
purge with a hash-chained receipt, and the canary found nowhere afterwards."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from litestar.testing import TestClient
from privacy_support import files_containing, populate, request_erasure
from signin_support import CSRF, last_code, sign_in

from appliance import mail
from appliance.accounts import service as accounts
from appliance.db import open_db
from appliance.errors import Conflict
from appliance.inference.client import InferenceClient
from appliance.knowledge import service as knowledge
from appliance.privacy import erasure, receipts, retention
from appliance.tasks import create_queue, run_purges
from appliance.web import create_app


def cli(settings, *args):
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--data-dir", str(settings.paths.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )


def count(db, table, where="1 = 1", params=()):
    return db.execute(f"select count(*) from {table} where {where}", params).fetchone()[0]  # noqa: S608


def test_owner_deletes_the_account_with_a_fresh_code(settings, db, clock, app):
    world = populate(db, settings, clock(), "ownerdeletecanary")
    with TestClient(app) as client, TestClient(app) as script:
        sign_in(client, settings, "owner@example.com")
        script.headers["Authorization"] = f"Bearer {world.owner_key}"
        assert script.get("/api/me").status_code == 200
        started = client.post("/api/me/deletion-code")
        assert started.status_code == 202, started.text
        attempt = started.json()["attempt_id"]
        code = last_code(settings, "owner@example.com")
        wrong = "000000" if code != "000000" else "111111"
        refused = client.post("/api/me/deletion", json={"attempt_id": attempt, "code": wrong})
        assert refused.status_code == 400
        assert accounts.account(db, world.account.id).status == "active"
        done = client.post("/api/me/deletion", json={"attempt_id": attempt, "code": code})
        assert done.status_code == 200, done.text
        # Locked at once: the session, the owner's key and every instance.
        client.cookies.set("csrf", CSRF)
        assert client.get("/api/me").status_code == 401
        assert script.get("/api/me").status_code == 401
    assert (
        count(db, "instances", "account_id = ? and state != 'destroyed'", [world.account.id]) == 0
    )
    assert count(db, "sessions", "account_id = ? and revoked_at is null", [world.account.id]) == 0
    assert count(db, "api_keys", "account_id = ? and revoked_at is null", [world.account.id]) == 0
    assert erasure.deletion(db, world.account.id).request == "owner via Settings → My data"


def test_a_member_cannot_delete_the_account(settings, db, clock, app):
    populate(db, settings, clock(), "membercanary")
    with TestClient(app) as client:
        sign_in(client, settings, "member@example.com")
        assert client.post("/api/me/deletion-code").status_code == 404


def test_operator_deletes_from_the_cli_and_purge_erases(settings, db, clock):
    world = populate(db, settings, clock(), "operatorcanary")
    other, _other_account = accounts.create_user(db, "other@example.org", clock())
    result = cli(settings, "accounts", "delete", world.account.id, "--yes")
    assert result.returncode == 0, result.stderr
    assert accounts.role_in(db, world.account.id, world.owner.id) is None
    purged = cli(settings, "purge", "--now")
    assert purged.returncode == 0, purged.stderr
    assert "deleted_accounts" in purged.stdout
    assert erasure.deletion(db, world.account.id).erased_at is not None
    for table in (
        "documents",
        "collections",
        "collection_documents",
        "voice_samples",
        "profiles",
        "system_prompts",
        "messages",
    ):
        assert count(db, table, "account_id = ?", [world.account.id]) == 0, table
    assert accounts.user(db, other.id).email == "other@example.org"  # others untouched
    # Billing is kept for the tax period under a pseudonym, never under the account id.
    refs = {r[0] for r in db.execute("select account_ref from ledger_entries")}
    assert len(refs) == 1 and refs.pop().startswith("erased_")
    (receipt,) = receipts.receipts(db)
    assert receipt.body["counts"]["billing rows (pseudonymized)"] == 2
    verify = cli(settings, "privacy", "verify-receipts")
    assert verify.returncode == 0 and "chain intact" in verify.stdout
    # The worker emails the owner (queued once, no content); the address is then forgotten.
    pending = [t for t in create_queue(settings).huey.pending() if t.name == "send_mail"]
    assert [(t.args[0], t.args[1]) for t in pending] == [("account_erased", "owner@example.com")]
    assert "operatorcanary" not in json.dumps(pending[0].args)
    assert erasure.deletion(db, world.account.id).notify_email is None


def test_receipts_are_hash_chained(settings, db, clock):
    ids = []
    for n in range(3):
        _owner, account = accounts.create_user(
            db, f"o{n}@example.com", clock(), account_name=f"T{n}"
        )
        request_erasure(db, settings, account.id, clock())
        ids.append(account.id)
    retention.run_all(db, settings, clock())
    chain = receipts.receipts(db)
    assert [r.account_id for r in chain] == ids
    assert chain[0].body["counts"]["users"] == 1 and chain[0].body["counts"]["memberships"] == 1
    assert "o0@example.com" not in json.dumps([r.body for r in chain])
    assert receipts.verify(db) == []
    # An edited receipt...
    db.execute(
        "update deletion_receipts set body = replace(body, '\"users\":1', '\"users\":0') "
        "where seq = 2"
    )
    assert any("receipt 2: edited" in p for p in receipts.verify(db))
    db.execute(
        "update deletion_receipts set body = replace(body, '\"users\":0', '\"users\":1') "
        "where seq = 2"
    )
    assert receipts.verify(db) == []
    # ...a missing one in the middle, and the newest one removed.
    db.execute("delete from deletion_receipts where seq = 3")
    assert any("missing" in p for p in receipts.verify(db))
    result = cli(settings, "privacy", "verify-receipts")
    assert result.returncode == 1 and "CHAIN BROKEN" in result.stdout


def test_interrupted_erasure_resumes_with_exact_counts(tmp_path, clock):
    from conftest import make_settings

    from appliance.cli import initialise

    settings = make_settings(tmp_path / "data", **{"privacy.purge_batch_size": 1})
    initialise(settings)
    db = open_db(settings)
    world = populate(db, settings, clock(), "resumecanary")
    request_erasure(db, settings, world.account.id, clock())
    assert erasure.erase_account(db, settings, world.account.id, clock(), max_batches=3) is None
    assert erasure.deletion(db, world.account.id).erased_at is None
    receipt = erasure.erase_account(db, settings, world.account.id, clock())
    assert receipt is not None
    counts = receipt.body["counts"]
    assert counts["messages"] == 2 and counts["documents"] == 1 and counts["users"] == 2
    assert [f["kind"] for f in receipt.body["files"]] == ["document", "voice"]
    assert not (settings.paths.files / world.account.id).exists()
    db.close()


@pytest.mark.inference
def test_canary_is_nowhere_after_deletion_and_purge(linked_settings, clock, production_logs):
    settings = linked_settings
    canary = "quokkacanary5531"
    db = open_db(settings)
    queue = create_queue(settings, immediate=True)
    app = create_app(settings, clock=clock, queue=queue)
    world = populate(db, settings, clock(), canary)
    knowledge.ingest(db, settings, InferenceClient.from_settings(settings), world.document_id)
    assert knowledge.document(db, world.account.id, world.document_id).status == "ready"
    assert (
        db.execute("select count(*) from chunks_fts where chunks_fts match ?", [canary]).fetchone()[
            0
        ]
        == 1
    )
    with TestClient(app) as client:
        sign_in(client, settings, "owner@example.com")
        assert client.get("/api/search", params={"q": canary}).status_code == 200
        attempt = client.post("/api/me/deletion-code").json()["attempt_id"]
        code = last_code(settings, "owner@example.com")
        assert (
            client.post("/api/me/deletion", json={"attempt_id": attempt, "code": code}).status_code
            == 200
        )
    vectors = [row[0] for row in db.execute("select embedding from chunk_vectors")]
    assert vectors
    run_purges(settings, queue.send_mail)
    db.close()
    # Not even the embeddings (which can leak text) survive in the database file.
    database = settings.paths.database.read_bytes()
    assert not [v for v in vectors if v in database]
    # Nothing in the database files (WAL checkpointed), the data dir, the outbox...
    hits = files_containing(settings.paths.data_dir, canary)
    assert hits == [], hits
    # ...nor any log line, at any level (the request log saw the search for it).
    output = production_logs.getvalue()
    assert '"path": "/api/search"' in output
    assert canary not in output
    # The confirmation went out and carries no content either.
    confirmation = [m for m in mail.outbox_messages(settings) if "erased" in m["Subject"]]
    assert len(confirmation) == 1
    assert canary not in confirmation[0].as_string()
    # The vector and FTS indexes hold nothing of the account.
    db = open_db(settings)
    assert db.execute("select count(*) from chunks").fetchone()[0] == 0
    assert db.execute("select count(*) from chunk_vectors").fetchone()[0] == 0
    assert db.execute("select count(*) from messages_fts").fetchone()[0] == 0
    db.close()


def test_erase_window_is_a_promise_doctor_checks(settings, db, clock):
    world = populate(db, settings, clock(), "windowcanary")
    found = request_erasure(db, settings, world.account.id, clock())
    assert found.due_at[:10] == (clock() + timedelta(days=30)).date().isoformat()
    late = clock() + timedelta(days=31)
    assert f"erasure of {world.account.id}" in retention.overdue(db, late)
    retention.run_all(db, settings, late)
    assert f"erasure of {world.account.id}" not in retention.overdue(db, late)


def test_a_member_who_joined_another_account_meanwhile_is_kept(settings, db, clock):
    world = populate(db, settings, clock(), "joinercanary")
    request_erasure(db, settings, world.account.id, clock())
    _, elsewhere = accounts.create_user(db, "someone@example.org", clock(), account_name="New")
    accounts.add_member(db, elsewhere.id, world.member.id, "member", clock())
    receipt = erasure.erase_account(db, settings, world.account.id, clock())
    assert receipt.body["counts"]["users"] == 1  # the owner only
    assert accounts.user(db, world.member.id).email == "member@example.com"
    assert accounts.role_in(db, elsewhere.id, world.member.id) == "member"
    with pytest.raises(Conflict):
        erasure.erase_account(db, settings, world.account.id, clock())


def test_cli_delete_asks_first(settings, db, clock):
    world = populate(db, settings, clock(), "askfirstcanary")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "accounts",
            "delete",
            world.account.id,
            "--data-dir",
            str(settings.paths.data_dir),
        ],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "nothing deleted" in result.stdout
    assert accounts.account(db, world.account.id).status == "active"
    missing = cli(settings, "accounts", "delete", "acc_doesnotexist", "--yes")
    assert missing.returncode == 2 and "No such account" in missing.stderr


def test_my_data_page_offers_deletion_to_owners_only(settings, db, clock, app):
    populate(db, settings, clock(), "pagecanary")
    with TestClient(app) as owner, TestClient(app) as member:
        sign_in(owner, settings, "owner@example.com")
        sign_in(member, settings, "member@example.com")
        assert "Delete the account" in owner.get("/settings/data").text
        page = member.get("/settings/data").text
        assert "Export my data" in page and "Delete the account" not in page
