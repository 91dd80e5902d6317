"""``InferenceClient`` (what the web and worker processes use) against the real service."""

from __future__ import annotations

import asyncio

import pytest
from conftest import free_port

from appliance.errors import InvalidInput, Unavailable
from appliance.inference import models
from appliance.inference.client import InferenceClient, InferenceError, _sse_data

pytestmark = pytest.mark.inference

STORY = {
    "messages": [{"role": "user", "content": "Tell me a story about a dog."}],
    "temperature": 0,
    "seed": 99,
    "max_tokens": 20,
}


@pytest.fixture(scope="module")
def client(inference_service, inference_key) -> InferenceClient:
    return InferenceClient(inference_service.url + "/", inference_key, timeout=120)


def stream(client: InferenceClient, body: dict, **kwargs) -> list[dict]:
    async def chunks() -> list[dict]:
        return [chunk async for chunk in client.astream_chat(body, **kwargs)]

    return asyncio.run(chunks())


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_chat(client):
    body = client.chat(
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "temperature": 0,
            "max_tokens": 30,
        },
        account_id="account-1",
    )
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["model"] == models.DEFAULT_CHAT
    assert body["usage"]["completion_tokens"] > 0


def test_chat_ignores_a_stream_flag_in_the_body(client):
    body = client.chat({**STORY, "stream": True, "max_tokens": 3})
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 3


def test_astream_chat_answers_like_chat(client):
    whole = client.chat(STORY)

    chunks = stream(client, STORY, account_id="account-1")

    assert text_of(chunks).strip() and whole["choices"][0]["message"]["content"].strip()
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    # The client always asks for the usage chunk, and it comes last.
    assert chunks[-1]["choices"] == []
    for count in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert chunks[-1]["usage"][count] == whole["usage"][count]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_embed(client):
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Interest rates rose."]

    vectors = client.embed(texts, account_id="account-1")

    assert len(vectors) == 3
    assert all(len(vector) == 384 for vector in vectors)
    cat, kitten, rates = vectors

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert abs(dot(cat, cat) - 1) < 1e-4
    assert dot(cat, kitten) > dot(cat, rates)


def test_async_stream_chat_and_chat(client):
    async def both():
        chunks = [chunk async for chunk in client.astream_chat(STORY, account_id="a")]
        whole = await client.achat(STORY, account_id="a")
        health = await client.ahealth()
        return chunks, whole, health

    chunks, whole, health = asyncio.run(both())

    assert text_of(chunks) == whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] == 20
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert health["status"] == "ok"


def test_health(client):
    health = client.health()
    assert health["status"] == "ok"
    assert health["chat_model"] == models.DEFAULT_CHAT
    assert health["embedding_model"] == models.DEFAULT_EMBEDDING
    assert health["device"] == "cpu"


def test_bad_requests_raise_invalid_input(client):
    with pytest.raises(InvalidInput, match="temperature"):
        client.chat({**STORY, "temperature": 9})
    with pytest.raises(InvalidInput, match="temperature"):
        stream(client, {**STORY, "temperature": 9})
    with pytest.raises(InvalidInput, match="input"):
        client.embed([])


def test_a_closed_port_is_unavailable(inference_key):
    url = f"http://127.0.0.1:{free_port()}"
    closed = InferenceClient(url, inference_key, timeout=5)

    calls = {
        "health": closed.health,
        "chat": lambda: closed.chat(STORY),
        "astream_chat": lambda: stream(closed, STORY),
        "embed": lambda: closed.embed(["hello"]),
        "achat": lambda: asyncio.run(closed.achat(STORY)),
        "ahealth": lambda: asyncio.run(closed.ahealth()),
    }
    for name, call in calls.items():
        with pytest.raises(Unavailable) as caught:
            call()
        # Said to the person waiting: what happened and what to do, no internal address.
        assert str(caught.value) == (
            "The model is not answering right now (it may be restarting). "
            "Please try again in a few seconds."
        ), name
        assert url.rsplit(":", 1)[1] not in str(caught.value)
        assert caught.value.retry_after == 5


def test_a_wrong_key_raises_inference_error_401(inference_service):
    wrong = InferenceClient(inference_service.url, "not-the-key")

    with pytest.raises(InferenceError) as caught:
        wrong.chat(STORY)
    assert caught.value.status == 401
    assert "inference key" in str(caught.value)

    with pytest.raises(InferenceError) as caught:
        stream(wrong, STORY)
    assert caught.value.status == 401

    with pytest.raises(InferenceError) as caught:
        wrong.embed(["hello"])
    assert caught.value.status == 401


def test_no_key_at_all_raises_inference_error_401(inference_service):
    with pytest.raises(InferenceError) as caught:
        InferenceClient(inference_service.url, None).chat(STORY)
    assert caught.value.status == 401


def test_an_error_event_in_a_stream_raises_what_the_request_would_have():
    line = 'data: {"error": {"message": "The model is busy.", "status": 503, "retry_after": 7}}'
    with pytest.raises(Unavailable) as caught:
        _sse_data(line)
    assert str(caught.value) == "The model is busy." and caught.value.retry_after == 7
