"""Ingestion of many documents at once: one worker task drains the queue, and the chunks
of many small documents go to the inference service in one embedding request."""

from __future__ import annotations

import io

import pytest

from appliance.accounts import service as accounts
from appliance.clock import utcnow
from appliance.inference.client import InferenceClient
from appliance.knowledge import service as knowledge
from appliance.tasks import create_queue

pytestmark = pytest.mark.inference

EMBED_REQUESTS = 'appliance_inference_requests_total{kind="embeddings",status="completed"}'


def add(db, settings, account, user, name: str, text: str) -> str:
    upload = knowledge.add_document(
        db, settings, account, user, name, io.BytesIO(text.encode()), utcnow()
    )
    return upload.document.id


@pytest.fixture
def owner(db, clock):
    user, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    return account.id, user.id


def test_small_documents_share_one_embedding_request(linked_settings, db, owner):
    ids = [
        add(db, linked_settings, *owner, f"note{n}.txt", f"Note {n}: the pump in hall {n} leaks.")
        for n in range(12)
    ]
    client = InferenceClient.from_settings(linked_settings)
    before = client.metrics()[EMBED_REQUESTS]
    knowledge.ingest(db, linked_settings, client, ids)
    assert client.metrics()[EMBED_REQUESTS] - before == 1
    docs = [knowledge.document(db, owner[0], i) for i in ids]
    assert {d.status for d in docs} == {"ready"}
    assert all(d.chunks_done == d.chunks_total == 1 for d in docs)
    assert knowledge.audit(db, linked_settings) == []


def test_one_task_drains_the_queued_documents(linked_settings, db, owner):
    ids = [
        add(db, linked_settings, *owner, f"memo{n}.md", f"# Memo {n}\n\nBoiler {n} was serviced.")
        for n in range(5)
    ]
    queue = create_queue(linked_settings)  # not immediate: nothing runs until asked
    queue.ingest_document.call_local(ids[2])
    assert [knowledge.document(db, owner[0], i).status for i in ids] == ["ready"] * 5
    # Their own tasks, run later, find them ready and do nothing.
    chunks = db.execute("select count(*) from chunks").fetchone()[0]
    queue.ingest_document.call_local(ids[0])
    assert db.execute("select count(*) from chunks").fetchone()[0] == chunks


def test_a_failed_document_does_not_hold_up_the_others(linked_settings, db, owner):
    good = add(db, linked_settings, *owner, "good.txt", "The lift in block C was repaired.")
    blank = add(db, linked_settings, *owner, "blank.md", "\n\n   \n")
    knowledge.ingest(
        db, linked_settings, InferenceClient.from_settings(linked_settings), [blank, good]
    )
    assert knowledge.document(db, owner[0], good).status == "ready"
    failed = knowledge.document(db, owner[0], blank)
    assert failed.status == "failed" and "No text" in failed.error
