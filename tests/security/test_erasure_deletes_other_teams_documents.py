"""Audit 2026-12, finding 3: erasing one account deleted another account's documents.

A former member of team D deleted their own account; the erasure also deleted the
documents they had uploaded to D. Erasure acts on the erased account's rows (and the
departing person's own ones); what they contributed to another team stays there,
attributed to "a former member" (``uploaded_by`` null).
"""

import io

import pytest
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.inference.client import InferenceClient
from appliance.knowledge import service as knowledge
from appliance.privacy import erasure, receipts
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.inference

CANARY = "wombatcanary8812"


def test_a_former_members_erasure_leaves_their_upload_in_the_other_team(linked_settings, db, clock):
    settings = linked_settings
    dee, team_d = accounts.create_user(db, "dee@example.com", clock(), account_name="Team D")
    leaver, own = accounts.create_user(db, "leaver@example.com", clock(), account_name="Mine")
    accounts.add_member(db, team_d.id, leaver.id, "member", clock())
    upload = knowledge.add_document(
        db,
        settings,
        team_d.id,
        leaver.id,
        "handbook.md",
        io.BytesIO(f"# Handbook\n\nThe night shift code word is {CANARY}.\n".encode()),
        clock(),
    )
    knowledge.ingest(db, settings, InferenceClient.from_settings(settings), upload.document.id)
    mine = knowledge.add_document(
        db,
        settings,
        own.id,
        leaver.id,
        "mine.md",
        io.BytesIO(b"# Mine\n\nMy own notes.\n"),
        clock(),
    )

    # The leaver leaves D, then deletes their own account, which is erased.
    accounts.remove_member(db, team_d.id, "member", leaver.id, leaver.id)
    erasure.request_deletion(
        db,
        settings,
        own.id,
        requested_by=leaver.id,
        request="owner via Settings → My data",
        notify_email="leaver@example.com",
        now=clock(),
    )
    receipt = erasure.erase_account(db, settings, own.id, clock())

    # Their own account's document is gone, and they are.
    assert knowledge.documents(db, own.id) == []
    assert accounts.user_by_email(db, "leaver@example.com") is None
    assert receipt.body["counts"]["documents"] == 1
    # D's document is still there, whole, searchable, and attributed to nobody.
    kept = knowledge.document(db, team_d.id, upload.document.id)
    assert kept.status == "ready" and kept.uploaded_by is None
    assert knowledge.document_path(settings, kept).is_file()
    assert receipts.receipts(db, team_d.id) == []
    _, key = auth.create_key(
        db, user_id=dee.id, account_id=team_d.id, name="k", scope="manage", now=clock()
    )
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        listed = client.get(f"/api/documents/{upload.document.id}").json()
        assert listed["uploaded_by"] is None
        hits = client.get("/api/search", params={"q": CANARY}).json()["hits"]
    assert [h["document_id"] for h in hits][:1] == [upload.document.id]
    assert mine.document.id not in {h["document_id"] for h in hits}
