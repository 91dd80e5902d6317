"""Egress: a chat with retrieval and a document ingestion open no socket outside loopback,
in the web and worker code (audited in this process) or in the inference service (audited
in its own process by egress_audit/sitecustomize.py)."""

import importlib.util
import io
import sys
from pathlib import Path

import pytest
from conftest import link_models, start_inference
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.inference

AUDIT_DIR = Path(__file__).parent / "egress_audit"
# The same rules as in the child process (loaded by path: "sitecustomize" may be taken).
_spec = importlib.util.spec_from_file_location("egress_audit", AUDIT_DIR / "sitecustomize.py")
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)

CANARY = "narwhalcanary2207"
FACT = f"# Project Heron\n\nThe vault code of Project Heron is {CANARY}.\n".encode()
SEEN: list[str] | None = None


def _record(event, args):
    if SEEN is not None and event == "socket.connect":
        outside = audit._outside(args[1])
        SEEN.append(f"OUTSIDE {outside}" if outside else "loopback")


sys.addaudithook(_record)  # hooks cannot be removed: it records only while SEEN is a list


def test_chat_with_retrieval_and_ingestion_stay_on_the_box(
    settings, models_dir, db, clock, tmp_path, production_logs
):
    global SEEN
    link_models(settings, models_dir)
    audit_file = tmp_path / "inference-egress.txt"
    service = start_inference(
        settings,
        PYTHONPATH=str(AUDIT_DIR),
        APPLIANCE_EGRESS_AUDIT=str(audit_file),
        APPLIANCE_LOGGING__LEVEL="debug",
    )
    try:
        web_settings = settings.replace(**{"inference.url": service.url})
        app = create_app(
            web_settings, clock=clock, queue=create_queue(web_settings, immediate=True)
        )
        owner, account = accounts.create_user(db, "owner@example.com", clock())
        _, manage = auth.create_key(
            db, user_id=owner.id, account_id=account.id, name="m", scope="manage", now=clock()
        )
        SEEN = []
        with TestClient(app) as client:
            client.headers["Authorization"] = f"Bearer {manage}"
            # Ingestion runs the worker's code here (immediate queue): extract, chunk, embed.
            upload = client.post("/api/documents", files={"file": ("heron.md", io.BytesIO(FACT))})
            assert upload.status_code == 202
            assert client.get(f"/api/documents/{upload.json()['id']}").json()["status"] == "ready"
            instance = client.post("/api/instances", json={"name": "assistant", "max_tokens": 24})
            assert instance.status_code == 201, instance.text
            key = client.post("/api/keys", json={"name": "k", "scope": "inference"}).json()["key"]
            answer = client.post(
                "/v1/chat/completions",
                json={
                    "model": "assistant",
                    "messages": [
                        {"role": "user", "content": "What is the vault code of Project Heron?"}
                    ],
                    "max_tokens": 24,
                    "temperature": 0,
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["appliance"]["passages"][0]["filename"] == "heron.md"
        seen, SEEN = SEEN, None
    finally:
        SEEN = None
        service.stop()
    # The audit saw the loopback calls to inference (so it works) and nothing else.
    assert "loopback" in seen
    assert [s for s in seen if s.startswith("OUTSIDE")] == []
    child = audit_file.read_text().splitlines()
    assert child[0].startswith("hook installed")
    assert [line for line in child if line.startswith("OUTSIDE")] == []
    # The question, the passage and the answer were logged nowhere, at any level: not in
    # this process (web and worker code) and not by the inference service.
    assert CANARY not in production_logs.getvalue()
    inference_log = service.log()
    assert '"level": "debug"' in inference_log or '"level": "info"' in inference_log
    assert CANARY not in inference_log and "Project Heron" not in inference_log
    assert '"path": "/v1/chat/completions"' in production_logs.getvalue()
