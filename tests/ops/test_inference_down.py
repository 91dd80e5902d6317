"""While the inference service is down (crashed, restarting), the web keeps serving: pages,
sign-in and documents work; chat and /v1 answer 503 with Retry-After and a message a person
can act on, keep the question, and hold no credit. (Search falling back to full text:
tests/knowledge/test_knowledge.py; a stream cut by a real crash under `appliance up`:
tests/ops/test_crash_inference.py.)"""

from __future__ import annotations

import re

import pytest
from conftest import free_port, make_settings
from litestar.testing import TestClient

from appliance import mail
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import ledger
from appliance.billing import service as billing
from appliance.chat import service as chat
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances
from appliance.tasks import create_queue
from appliance.web import create_app

CSRF = "down-test-csrf"
EMAIL = "down@example.com"


@pytest.fixture
def down(settings, clock):
    """The web app with billing on and credit, its inference service nowhere to be found."""
    dead = f"http://127.0.0.1:{free_port()}"
    (settings.paths.data_dir / "appliance.toml").write_text(
        f'[inference]\nurl = "{dead}"\n[billing]\nenabled = true\n'
    )
    s = make_settings(settings.paths.data_dir)
    from appliance.db import open_db

    db = open_db(s)
    user, account = accounts.create_user(db, EMAIL, clock(), account_name="Down")
    instance = instances.create(
        db,
        account.id,
        "owner",
        {"name": "assistant", "max_tokens": 16},
        models=[DEFAULT_CHAT],
        max_tokens_cap=s.inference.max_tokens,
        now=clock(),
    )
    billing.adjust(db, account.id, 5, "credit", clock())
    _, key = auth.create_key(
        db, user_id=user.id, account_id=account.id, name="k", scope="inference", now=clock()
    )
    # Tasks run inside the request (mail; ingestion, which waits for the model).
    app = create_app(s, clock=clock, queue=create_queue(s, immediate=True))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield {
            "client": client,
            "db": db,
            "settings": s,
            "user": user,
            "account": account,
            "instance": instance,
            "key": key,
            "dead": dead,
        }
    db.close()


def sign_in(client, settings) -> None:
    assert client.post("/api/auth/code", json={"email": EMAIL}).status_code == 202
    message = mail.outbox_messages(settings)[-1]
    text = message.get_body(preferencelist=("plain",)).get_content()
    code = re.search(r"^\s*(\d{6})\s*$", text, re.M).group(1)
    response = client.post("/api/auth/session", json={"email": EMAIL, "code": code})
    assert response.status_code == 200, response.text
    client.cookies.set("csrf", CSRF)
    client.headers["X-CSRFToken"] = CSRF


def assert_unavailable(response, dead: str) -> str:
    """503, Retry-After, an OpenAI-shaped error, a message without internal addresses."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["type"] == "unavailable"
    message = error["message"]
    assert "try again" in message and "model" in message
    assert dead.rsplit(":", 1)[1] not in message and "http" not in message
    return message


def test_pages_sign_in_and_documents_work(down):
    client = down["client"]
    sign_in(client, down["settings"])
    for page in ("/", "/chat", "/knowledge", "/instances", "/billing", "/settings"):
        response = client.get(page)
        assert response.status_code == 200, page
    upload = client.post("/api/documents", files={"file": ("note.md", b"# Kettle\n\nUpstairs.")})
    assert upload.status_code == 202, upload.text
    listed = client.get("/api/documents").json()
    assert [d["filename"] for d in listed] == ["note.md"]
    # Not failed: the task retries and the document is finished once the model is back.
    assert listed[0]["status"] in ("queued", "extracting") and not listed[0]["error"]


@pytest.mark.parametrize("stream", [True, False])
def test_chat_answers_503_keeps_the_question_and_holds_nothing(down, stream):
    client, db = down["client"], down["db"]
    sign_in(client, down["settings"])
    conversation = client.post(
        "/api/conversations", json={"instance_id": down["instance"].id}
    ).json()["id"]
    url = f"/api/conversations/{conversation}/messages"
    response = client.post(url, json={"content": "Where is the kettle?", "stream": stream})
    assert_unavailable(response, down["dead"])
    kept = chat.get(db, down["account"].id, down["user"].id, conversation)
    assert [(m.role, m.content) for m in kept.messages] == [("user", "Where is the kettle?")]
    assert kept.generating_since is None  # not left busy: "Answer again" can run at once
    again = client.post(f"/api/conversations/{conversation}/regenerate", json={"stream": stream})
    assert_unavailable(again, down["dead"])
    assert ledger.held(db, down["account"].id) == 0
    assert ledger.entries(db, down["account"].id, kinds=("usage",)) == []
    # The page shows the kept question with "Answer again".
    page = client.get(f"/chat/{conversation}").text
    assert "Where is the kettle?" in page and ">Answer again</button>" in page


def test_v1_answers_503_with_retry_after_and_holds_nothing(down):
    client = down["client"]
    headers = {"Authorization": f"Bearer {down['key']}"}
    body = {"model": "assistant", "messages": [{"role": "user", "content": "Hello?"}]}
    for stream in (False, True):
        response = client.post(
            "/v1/chat/completions", json={**body, "stream": stream}, headers=headers
        )
        assert_unavailable(response, down["dead"])
    embeddings = client.post(
        "/v1/embeddings", json={"model": "assistant", "input": "hello"}, headers=headers
    )
    assert_unavailable(embeddings, down["dead"])
    rows = down["db"].query("select state from billing_holds")
    assert [row["state"] for row in rows if row["state"] == "held"] == []
    assert ledger.held(down["db"], down["account"].id) == 0
