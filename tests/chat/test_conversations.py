"""Conversations over the JSON API with the real tiny model: streaming, stop-safe storage,
regenerate, edit, search, rename, delete (canary), isolation, and /v1 ``store``."""

import json
import re

import openai
import pytest
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import service as chat
from appliance.chat.personal import conversation_markdown
from appliance.chat.store import ChatStore
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.inference

CANARY = "QUOKKA-LANTERN-7731"
FACT = b"# Project Zephyr\n\nThe launch code of Project Zephyr is PURPLE-OTTER-42.\n"


def session_client(app, db, settings, clock, email, account_name=None, account=None):
    """A client signed in by session cookie (as the browser is), with the CSRF header."""
    if account is None:
        user, account = accounts.create_user(db, email, clock(), account_name=account_name)
    else:
        user = accounts.ensure_user(db, email, clock())
        accounts.add_member(db, account.id, user.id, "member", clock())
    token = auth.create_session(db, settings, user.id, account.id, clock())
    client = TestClient(app)  # requests only: the owner's client runs the app's lifespan
    client.cookies.set("session", token)
    client.cookies.set("csrf", "csrf-value")
    client.headers["X-CSRFToken"] = "csrf-value"
    return client, user, account


@pytest.fixture
def env(linked_settings, models_dir, db, clock):
    from conftest import link_models

    settings = linked_settings
    link_models(settings, models_dir)
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    owner, user, account = session_client(app, db, settings, clock, "own@example.com", "A")
    instance = owner.post("/api/instances", json={"name": "assistant", "max_tokens": 24})
    assert instance.status_code == 201, instance.text
    clients = []
    with owner:
        yield {
            "app": app,
            "client": owner,
            "user": user,
            "account": account,
            "instance": instance.json(),
            "db": db,
            "clock": clock,
            "settings": settings,
            "clients": clients,
        }


def new_conversation(client, instance_id):
    created = client.post("/api/conversations", json={"instance_id": instance_id})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def events(response) -> list[dict]:
    return [
        json.loads(line[len("data: ") :])
        for line in response.text.split("\n\n")
        if line.startswith("data: ")
    ]


def ask(client, conversation_id, content, path="messages"):
    response = client.post(
        f"/api/conversations/{conversation_id}/{path}",
        json={"content": content} if content is not None else {},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events(response)


def test_streamed_answer_is_stored_with_usage_and_title(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    got = ask(client, cid, "Say hello to the team in one sentence.")
    assert got[0]["type"] == "user"
    assert got[0]["message"]["content"] == "Say hello to the team in one sentence."
    # Before the first token the page is told what is happening (no documents here).
    assert got[1] == {"type": "status", "text": "Writing the answer…"}
    deltas = [e["text"] for e in got if e["type"] == "delta"]
    assert len(deltas) > 1  # token by token, not one blob
    done = got[-1]
    assert done["type"] == "done"
    message = done["message"]
    assert message["content"].strip() == "".join(deltas).strip()
    assert message["usage"]["completion_tokens"] == len(deltas)
    assert message["usage"]["prompt_tokens"] > 10
    assert message["html"].startswith("<")
    stored = client.get(f"/api/conversations/{cid}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["title"] == "Say hello to the team in one sentence."
    # The request log names the instance (and never the conversation's words).
    logged = (
        env["db"]
        .execute(
            "select path, instance_id from request_log where method = 'POST' and path like ?",
            ["/api/conversations/%"],
        )
        .fetchall()
    )
    assert ("/api/conversations/{conversation_id}/messages", env["instance"]["id"]) in logged
    assert stored["messages"][1]["usage"] == message["usage"]


def test_follow_up_sends_history_and_long_chats_are_trimmed(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    ask(client, cid, "My name is Bartholomew.")
    db = env["db"]
    conv = chat.get(db, env["account"].id, env["user"].id, cid)
    from appliance.inference.client import InferenceClient

    inference = InferenceClient.from_settings(env["settings"])

    def prepared(content: str):
        """The turn ``content`` would start (prompt composed), ended unanswered."""
        turn = chat.prepare_turn(
            db,
            env["settings"],
            inference,
            env["account"].id,
            env["user"].id,
            cid,
            env["clock"](),
            content=content,
        )
        chat.end_turn(db, cid)
        return turn

    turn = prepared("What is my name?")
    sent = turn.composed.payload["messages"]
    assert any("Bartholomew" in m["content"] for m in sent if m["role"] == "user")
    assert sent[-1] == {"role": "user", "content": "What is my name?"}
    assert len(conv.messages) == 2
    # A conversation longer than the context budget still gets an answer: the oldest
    # turns are left out of the prompt (they stay in the conversation).
    small = client.patch(f"/api/instances/{env['instance']['id']}", json={"context_budget": 1024})
    assert small.status_code == 200, small.text
    long_text = "This sentence pads the conversation with many tokens. " * 50
    for _ in range(3):
        got = ask(client, cid, long_text)
        assert got[-1]["type"] == "done", got[-1]
    turn = prepared("And now?")
    assert turn.composed.dropped_messages > 0
    assert turn.composed.payload["messages"][-1]["content"] == "And now?"
    assert turn.composed.prompt_tokens <= 1024


def test_regenerate_and_edit_keep_the_earlier_versions(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    ask(client, cid, "Name a colour.")
    ask(client, cid, "Name a fruit.")
    before = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert len(before) == 4 and all("versions" not in m for m in before)
    got = ask(client, cid, None, path="regenerate")
    assert got[0]["type"] != "user" and got[-1]["type"] == "done"
    after = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert len(after) == 4
    assert [m["id"] for m in after[:3]] == [m["id"] for m in before[:3]]
    assert after[3]["id"] != before[3]["id"]
    assert after[3]["versions"] == {
        "index": 2,
        "count": 2,
        "previous": before[3]["id"],
        "next": None,
    }
    # "Previous version" goes back to the first answer.
    back = client.post(f"/api/conversations/{cid}/messages/{before[3]['id']}/select")
    assert back.status_code == 200, back.text
    assert back.json()["messages"][3]["id"] == before[3]["id"]
    assert back.json()["messages"][3]["versions"]["index"] == 1

    # Editing the first question starts a new line; the old one (4 messages) is kept.
    first_question = after[0]["id"]
    got = ask(client, cid, "Name an animal.", path=f"messages/{first_question}/edit")
    assert got[0]["message"]["content"] == "Name an animal."
    edited = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in edited] == ["user", "assistant"]
    assert edited[0]["content"] == "Name an animal."
    assert edited[0]["versions"]["count"] == 2
    assert edited[0]["versions"]["previous"] == first_question
    old = client.post(f"/api/conversations/{cid}/messages/{first_question}/select").json()
    assert [m["id"] for m in old["messages"]] == [m["id"] for m in before]
    # Every version is in the user's export, and in the full-text search.
    db = env["db"]
    conversation = chat.get(db, env["account"].id, env["user"].id, cid)
    markdown = conversation_markdown(conversation, ChatStore(db).messages(cid))
    for text in ("Name a colour.", "Name a fruit.", "Name an animal.", "## Earlier versions"):
        assert text in markdown
    assert db["messages"].count_where("conversation_id = ?", [cid]) == 7
    assert [
        c["id"] for c in chat.list_for_user(db, env["account"].id, env["user"].id, query="animal")
    ] == [cid]
    # Editing an answer, or a message that is not there, is refused.
    bad = client.post(
        f"/api/conversations/{cid}/messages/{edited[1]['id']}/edit", json={"content": "x"}
    )
    assert bad.status_code == 404
    missing = client.post(f"/api/conversations/{cid}/messages/msg_nope/select")
    assert missing.status_code == 404


def test_a_new_chat_whose_first_message_cannot_fit_leaves_no_conversation(env):
    client, instance_id = env["client"], env["instance"]["id"]
    paste = "The quarterly report lists every invoice of the year. " * 4000
    before = client.get("/api/conversations").json()
    refused = client.post("/api/conversations", json={"instance_id": instance_id, "content": paste})
    assert refused.status_code == 400
    assert "too long for the instance" in refused.json()["error"]["message"]
    accepted = client.post(
        "/api/conversations", json={"instance_id": instance_id, "content": "Hello there"}
    )
    assert accepted.status_code == 201 and accepted.json()["messages"] == []
    client.delete(f"/api/conversations/{accepted.json()['id']}")
    # Without JavaScript (a form post, with the form's CSRF token) likewise.
    del client.headers["X-CSRFToken"]
    client.cookies.delete("csrf")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/chat").text)[1]
    form = {"_csrf_token": token, "instance_id": instance_id, "content": paste}
    assert client.post("/chat", data=form, follow_redirects=False).status_code == 400
    assert client.get("/api/conversations").json() == before


def test_a_message_that_cannot_fit_is_refused_before_it_is_stored(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    paste = "The quarterly report lists every invoice of the year. " * 4000  # 216k chars
    measured = client.post(
        "/api/conversations/measure",
        json={"instance_id": env["instance"]["id"], "content": paste},
    ).json()
    instance = client.get(f"/api/instances/{env['instance']['id']}").json()
    assert measured["context_budget"] == instance["context_budget"] == 4096
    assert measured["answer_reserve"] == instance["max_tokens"] == 24
    assert measured["limit"] == 4096 - 24 - measured["system_tokens"]
    assert measured["tokens"] > measured["limit"] and measured["fits"] is False
    refused = client.post(f"/api/conversations/{cid}/messages", json={"content": paste})
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert f"{measured['tokens']:,} tokens" in message and "4,096" in message
    assert client.get(f"/api/conversations/{cid}").json()["messages"] == []
    short = client.post(
        "/api/conversations/measure",
        json={"instance_id": env["instance"]["id"], "content": "Hello there"},
    ).json()
    assert short["fits"] is True and 2 < short["tokens"] < 12
    # Past 32,000 characters nothing is cut: the whole text is measured.
    counts = [
        client.post(
            "/api/conversations/measure",
            json={"instance_id": env["instance"]["id"], "content": "Plain words. " * n},
        ).json()["tokens"]
        for n in (1500, 3000)  # 19,500 and 39,000 characters
    ]
    assert counts[1] > 1.9 * counts[0]


def test_non_streaming_bad_input_and_busy_conversation(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    answer = client.post(
        f"/api/conversations/{cid}/messages", json={"content": "Hi", "stream": False}
    )
    assert answer.status_code == 200
    assert answer.json()["message"]["role"] == "assistant"
    for body in ({"content": ""}, {"content": "   "}, {"content": 5}, {}):
        refused = client.post(f"/api/conversations/{cid}/messages", json=body)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"]
    over = client.post(f"/api/conversations/{cid}/messages", json={"content": "x" * 1_000_001})
    assert over.status_code == 400
    assert client.post("/api/conversations", json={"instance_id": "inst_nope"}).status_code == 404
    assert client.patch(f"/api/conversations/{cid}", json={"title": ""}).status_code == 400
    # A turn in progress (another tab) makes a second one wait its turn.
    env["db"].execute(
        "update conversations set generating_since = ? where id = ?",
        [env["clock"]().isoformat(), cid],
    )
    busy = client.post(f"/api/conversations/{cid}/messages", json={"content": "Again"})
    assert busy.status_code == 409
    env["clock"].advance(minutes=16)  # the other turn died with its process
    assert ask(client, cid, "Again")[-1]["type"] == "done"
    assert len(client.get(f"/api/conversations/{cid}").json()["messages"]) == 4


def test_stopped_instance_is_409_and_nothing_is_lost(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    assert client.post(f"/api/instances/{env['instance']['id']}/stop").status_code == 200
    refused = client.post(f"/api/conversations/{cid}/messages", json={"content": "Hi"})
    assert refused.status_code == 409
    assert "stopped" in refused.json()["error"]["message"]
    assert client.post(f"/api/instances/{env['instance']['id']}/start").status_code == 200
    assert ask(client, cid, "Hi")[-1]["type"] == "done"


def test_list_search_rename_and_delete_leaves_nothing_behind(env):
    client, db = env["client"], env["db"]
    first = new_conversation(client, env["instance"]["id"])
    ask(client, first, f"Remember the word {CANARY} for me.")
    second = new_conversation(client, env["instance"]["id"])
    ask(client, second, "What is the capital of France?")
    listed = client.get("/api/conversations").json()
    assert [c["id"] for c in listed] == [second, first]  # newest first
    found = client.get("/api/conversations", params={"q": CANARY}).json()
    assert [c["id"] for c in found] == [first]
    assert CANARY.lower() in found[0]["snippet"].lower()
    renamed = client.patch(f"/api/conversations/{first}", json={"title": "Secret word"})
    assert renamed.json()["title"] == "Secret word"
    assert client.delete(f"/api/conversations/{first}").status_code == 204
    assert client.get(f"/api/conversations/{first}").status_code == 404
    assert client.get("/api/conversations", params={"q": CANARY}).json() == []
    assert [c["id"] for c in client.get("/api/conversations").json()] == [second]
    # The deletion is receipted: counts only, in the hash chain.
    from appliance.privacy import receipts

    (receipt,) = [r for r in receipts.receipts(db, env["account"].id) if first in r.request]
    assert receipt.body["counts"] == {"conversations": 1, "messages": 2, "messages_fts": 2}
    assert CANARY not in json.dumps(receipt.body)
    assert receipts.verify(db) == []
    db.execute("pragma wal_checkpoint(TRUNCATE)")
    needle = CANARY.encode()
    for path in env["settings"].paths.data_dir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), f"canary left in {path}"


def test_destroying_an_instance_can_delete_its_conversations(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    kept = client.post("/api/instances", json={"name": "second"}).json()
    other = new_conversation(client, kept["id"])
    response = client.post(
        f"/api/instances/{env['instance']['id']}/destroy",
        json={"confirm": True, "delete_conversations": True},
    )
    assert response.status_code == 200, response.text
    assert client.get(f"/api/conversations/{cid}").status_code == 404
    assert client.get(f"/api/conversations/{other}").status_code == 200


def test_other_users_and_accounts_get_404(env):
    client = env["client"]
    cid = new_conversation(client, env["instance"]["id"])
    ask(client, cid, "Hello")
    message_id = client.get(f"/api/conversations/{cid}").json()["messages"][0]["id"]
    stranger, _, _ = session_client(
        env["app"], env["db"], env["settings"], env["clock"], "x@example.com", "B"
    )
    teammate, _, _ = session_client(
        env["app"],
        env["db"],
        env["settings"],
        env["clock"],
        "t@example.com",
        account=env["account"],
    )
    env["clients"] += [stranger, teammate]
    for other in (stranger, teammate):
        assert other.get(f"/api/conversations/{cid}").status_code == 404
        assert other.patch(f"/api/conversations/{cid}", json={"title": "x"}).status_code == 404
        assert (
            other.post(f"/api/conversations/{cid}/messages", json={"content": "x"}).status_code
            == 404
        )
        assert other.post(f"/api/conversations/{cid}/regenerate").status_code == 404
        edit = other.post(
            f"/api/conversations/{cid}/messages/{message_id}/edit", json={"content": "x"}
        )
        assert edit.status_code == 404
        assert other.delete(f"/api/conversations/{cid}").status_code == 404
        assert other.get("/api/conversations").json() == []
        assert other.get("/api/conversations", params={"q": "Hello"}).json() == []
        assert other.get(f"/chat/{cid}").status_code == 404
    # The stranger cannot start a conversation on this account's instance either.
    start = stranger.post("/api/conversations", json={"instance_id": env["instance"]["id"]})
    assert start.status_code == 404
    assert client.get(f"/api/conversations/{cid}").status_code == 200


def test_answer_cites_the_uploaded_document(env):
    client = env["client"]
    upload = client.post("/api/documents", files={"file": ("zephyr.md", FACT, "text/markdown")})
    assert upload.status_code == 202, upload.text
    cid = new_conversation(client, env["instance"]["id"])
    got = ask(client, cid, "What is the launch code of Project Zephyr?")
    message = got[-1]["message"]
    assert message["sources"], "the passage was retrieved"
    n = len(message["sources"])
    assert got[1] == {
        "type": "status",
        "text": f"Reading {n} passage{'' if n == 1 else 's'} from your documents…",
    }
    source = message["sources"][0]
    assert source["filename"] == "zephyr.md"
    assert "PURPLE-OTTER-42" in source["text"]
    # Whatever the tiny model wrote, every marker left in the stored text was retrieved.
    numbers = {s["number"] for s in message["sources"]}
    for marker in chat.CITATION.findall(message["content"]):
        assert int(marker) in numbers


def test_v1_store_keeps_the_exchange_only_when_asked(env):
    client = env["client"]
    key = client.post(
        "/api/keys",
        json={"name": "k", "scope": "inference", "instance_id": env["instance"]["id"]},
    ).json()["key"]
    sdk = openai.OpenAI(
        base_url="http://testserver.local/v1",
        api_key=key,
        http_client=TestClient(env["app"]),
        max_retries=0,
    )
    sdk.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Not kept."}], max_tokens=8
    )
    assert client.get("/api/conversations").json() == []
    kept = sdk.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Keep this one."}],
        max_tokens=8,
        extra_body={"appliance": {"store": True}},
    )
    conversation_id = kept.model_extra["appliance"]["conversation_id"]
    logged = (
        env["db"]
        .execute("select instance_id from request_log where path = '/v1/chat/completions'")
        .fetchall()
    )
    assert logged and {row[0] for row in logged} == {env["instance"]["id"]}
    streamed = sdk.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "And this follow-up."}],
        max_tokens=8,
        stream=True,
        extra_body={"appliance": {"store": True, "conversation_id": conversation_id}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    stored = client.get(f"/api/conversations/{conversation_id}").json()
    assert stored["source"] == "api"
    assert stored["messages"][0]["content"] == "Keep this one."
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][3]["content"] == text
    assert stored["messages"][1]["usage"]["completion_tokens"] > 0
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"appliance": {"store": "yes"}},
        )


def test_instance_settings_form_and_the_no_javascript_chat(env):
    import re

    client = env["client"]
    del client.headers["X-CSRFToken"]
    client.cookies.delete("csrf")
    page = client.get("/instances")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)
    iid = env["instance"]["id"]
    form = {
        "_csrf_token": token,
        "name": "helper",
        "model": env["instance"]["model"],
        "temperature": "0.2",
        "top_p": "0.9",
        "max_tokens": "16",
        "context_budget": "2048",
        "top_k": "3",
        "voice": "on",
        "system_prompt": "  You answer in one short sentence.  ",
    }
    saved = client.post(f"/instances/{iid}/settings", data=form, follow_redirects=False)
    assert saved.status_code in (302, 303), saved.text
    changed = client.get(f"/api/instances/{iid}", headers={"X-CSRFToken": token}).json()
    assert changed["name"] == "helper" and changed["temperature"] == 0.2
    assert changed["knowledge"] is False and changed["voice"] is True  # unchecked box: off
    assert changed["system_prompt"] == "You answer in one short sentence."
    refused = client.post(f"/instances/{iid}/settings", data={**form, "top_p": "7"})
    assert refused.status_code == 400 and "top_p" in refused.text
    refused = client.post(f"/instances/{iid}/settings", data={**form, "max_tokens": "many"})
    assert refused.status_code == 400 and "must be a number" in refused.text
    # Without JavaScript the chat forms answer in full and show the conversation.
    started = client.post(
        "/chat",
        data={"_csrf_token": token, "instance_id": iid, "content": "Hello there"},
        follow_redirects=False,
    )
    assert started.status_code in (302, 303)
    shown = client.get(started.headers["location"])
    assert "Hello there" in shown.text and "answer tokens" in shown.text


def test_onboarding_creates_the_first_instance_once(env):
    fresh, _, _ = session_client(
        env["app"], env["db"], env["settings"], env["clock"], "new@example.com", "New team"
    )
    assert fresh.get("/api/instances").json() == []
    answers = {"business_name": "New team", "age_confirmed": True}
    assert fresh.put("/api/profile", json=answers).status_code == 200
    first = fresh.get("/api/instances").json()
    assert [(i["name"], i["state"]) for i in first] == [("assistant", "running")]
    assert fresh.put("/api/profile", json=answers).status_code == 200
    assert len(fresh.get("/api/instances").json()) == 1
    # The team can chat at once.
    cid = new_conversation(fresh, first[0]["id"])
    assert ask(fresh, cid, "Hello")[-1]["type"] == "done"
