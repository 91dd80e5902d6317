"""Instances and the account's OpenAI-compatible endpoint, with the official openai client."""

import io

import openai
import pytest
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.inference

FACT = b"# Project Zephyr\n\nThe launch code of Project Zephyr is PURPLE-OTTER-42.\n"


@pytest.fixture
def env(linked_settings, models_dir, db, clock):
    from conftest import link_models

    settings = linked_settings
    link_models(settings, models_dir)  # the web reads the model registry it shares
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    _, manage = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="m", scope="manage", now=clock()
    )
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {manage}"
        created = client.post("/api/instances", json={"name": "assistant", "max_tokens": 48})
        assert created.status_code == 201, created.text
        other = client.post("/api/instances", json={"name": "other"}).json()
        bound = client.post(
            "/api/keys",
            json={"name": "bound", "scope": "inference", "instance_id": created.json()["id"]},
        ).json()["key"]
        free = client.post("/api/keys", json={"name": "free", "scope": "inference"}).json()["key"]
        yield {
            "app": app,
            "manage": client,
            "instance": created.json(),
            "other": other,
            "bound": bound,
            "free": free,
            "db": db,
            "clock": clock,
        }


def sdk(env, key):
    http = TestClient(env["app"])
    return openai.OpenAI(
        base_url="http://testserver.local/v1", api_key=key, http_client=http, max_retries=0
    )


def test_models_lists_instances_and_a_bound_key_sees_only_its_own(env):
    assert [m.id for m in sdk(env, env["free"]).models.list()] == ["assistant", "other"]
    assert [m.id for m in sdk(env, env["bound"]).models.list()] == ["assistant"]


def test_chat_with_the_openai_client(env):
    client = sdk(env, env["bound"])
    answer = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    assert answer.model == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert all(chunk.model == "assistant" for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage chunk unless asked for
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    with_usage = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert next(c for c in with_usage if not c.choices).usage.total_tokens > 0


def test_embeddings_with_the_openai_client(env):
    result = sdk(env, env["free"]).embeddings.create(
        model="assistant", input=["hello", "world"], encoding_format="float"
    )
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384


def test_knowledge_is_retrieved_and_cited(env):
    manage = env["manage"]
    upload = manage.post("/api/documents", files={"file": ("zephyr.md", io.BytesIO(FACT))})
    assert upload.status_code == 202
    http = TestClient(env["app"])
    response = http.post(
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "messages": [{"role": "user", "content": "What is the launch code of Project Zephyr?"}],
            "max_tokens": 24,
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {env['free']}"},
    )
    assert response.status_code == 200, response.text
    passages = response.json()["appliance"]["passages"]
    assert passages[0]["filename"] == "zephyr.md"
    off = http.post(
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "messages": [{"role": "user", "content": "What is the launch code of Project Zephyr?"}],
            "max_tokens": 4,
            "appliance": {"knowledge": False},
        },
        headers={"Authorization": f"Bearer {env['free']}"},
    )
    assert "appliance" not in off.json()


def test_errors_are_openai_shaped(env):
    client = sdk(env, env["bound"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="assistant", messages=[])
    manage = env["manage"]
    instance_id = env["instance"]["id"]
    assert manage.post(f"/api/instances/{instance_id}/stop").json()["state"] == "stopped"
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}]
        )
    assert manage.post(f"/api/instances/{instance_id}/start").json()["state"] == "running"
    refused = manage.post(f"/api/instances/{instance_id}/destroy", json={})
    assert refused.status_code == 400
    assert (
        manage.post(f"/api/instances/{instance_id}/destroy", json={"confirm": True}).status_code
        == 200
    )
    with pytest.raises(openai.AuthenticationError):  # its bound key was revoked at once
        client.models.list()
    assert manage.get(f"/api/instances/{instance_id}").status_code == 404


def test_a_session_cookie_never_authorises_v1_and_manage_keys_do_not_either(env):
    with pytest.raises(openai.AuthenticationError):
        sdk(env, env["manage"].headers["Authorization"].split()[1]).models.list()


def test_instances_api_validation_and_isolation(env):
    manage = env["manage"]
    assert manage.post("/api/instances", json={"name": "Bad Name!"}).status_code == 400
    assert manage.post("/api/instances", json={"name": "assistant"}).status_code == 409
    assert manage.post("/api/instances", json={"name": "x", "temperature": 5}).status_code == 400
    assert manage.post("/api/instances", json={"name": "y", "model": "gpt-9"}).status_code == 400
    changed = manage.patch(f"/api/instances/{env['other']['id']}", json={"top_k": 3})
    assert changed.status_code == 200 and changed.json()["top_k"] == 3
    db, clock = env["db"], env["clock"]
    stranger, account = accounts.create_user(db, "b@example.org", clock(), account_name="B")
    _, key = auth.create_key(
        db, user_id=stranger.id, account_id=account.id, name="b", scope="manage", now=clock()
    )
    _, inference_key = auth.create_key(
        db, user_id=stranger.id, account_id=account.id, name="i", scope="inference", now=clock()
    )
    other = TestClient(env["app"])
    other.headers["Authorization"] = f"Bearer {key}"
    instance_id = env["instance"]["id"]
    assert other.get(f"/api/instances/{instance_id}").status_code == 404
    assert other.patch(f"/api/instances/{instance_id}", json={"top_k": 1}).status_code == 404
    assert other.post(f"/api/instances/{instance_id}/stop").status_code == 404
    assert other.get("/api/instances").json() == []
    with pytest.raises(openai.NotFoundError):
        sdk(env, inference_key).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}]
        )


def test_a_key_cannot_be_bound_to_another_accounts_instance(env):
    db, clock = env["db"], env["clock"]
    stranger, account = accounts.create_user(db, "c@example.org", clock(), account_name="C")
    _, key = auth.create_key(
        db, user_id=stranger.id, account_id=account.id, name="c", scope="manage", now=clock()
    )
    other = TestClient(env["app"])
    other.headers["Authorization"] = f"Bearer {key}"
    response = other.post(
        "/api/keys",
        json={"name": "x", "scope": "inference", "instance_id": env["instance"]["id"]},
    )
    assert response.status_code == 404
