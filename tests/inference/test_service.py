"""The inference service over real HTTP, with the real bundled models.

Everything here talks to the session's one ``appliance inference`` child process
(SmolLM2-135M chat, all-MiniLM-L6-v2 embeddings) with httpx or the official ``openai``
client. Generations are short and greedy (temperature 0). Two runs of one request need
not give the same text (the batched engine's arithmetic depends on the batch and on reused
prefixes, tests/inference/test_batching.py), so tests compare what each answer guarantees:
its facts, its exact usage, its finish reason and stop strings.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from conftest import make_settings, wait_until
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.inference import models

pytestmark = pytest.mark.inference

CHAT_ID = models.DEFAULT_CHAT
EMBED_ID = models.DEFAULT_EMBEDDING
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"

FRANCE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
STORY = [{"role": "user", "content": "Tell me a story about a cat."}]
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
ERROR_TYPES = {"invalid_request_error", "authentication_error", "server_busy", "rate_limit_error"}


@pytest.fixture(scope="module")
def api(inference_service, inference_key):
    with httpx.Client(
        base_url=inference_service.url,
        headers={"Authorization": f"Bearer {inference_key}"},
        timeout=120,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def vocab(models_dir):
    """The chat model's tokenizer and chat template, loaded without the weights."""
    import llama_cpp

    registry = models.load_registry(make_settings(models_dir.parent))
    path = registry.path(registry.resolve("chat"))
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llama
    llama.close()


def assert_ok(response: httpx.Response) -> dict[str, Any]:
    assert response.is_success, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_api_error(response: httpx.Response, status: int, kind: str | None = None) -> str:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] in ERROR_TYPES
    if kind:
        assert error["type"] == kind
    assert "param" in error
    assert "code" in error
    return error["message"]


def chat(api: httpx.Client, **body) -> dict[str, Any]:
    return assert_ok(api.post(CHAT, json=body))


def sse_payloads(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an event stream, checking its framing on the way."""
    assert response.is_success, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.read().decode()
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events), raw
    return [event.removeprefix("data: ") for event in events]


def stream(api: httpx.Client, **body) -> list[dict[str, Any]]:
    """Every chunk of a streamed completion; the stream must end with ``[DONE]``."""
    with api.stream("POST", CHAT, json={**body, "stream": True}) as response:
        payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    assert "[DONE]" not in payloads[:-1]
    return [json.loads(payload) for payload in payloads[:-1]]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"]
    )


def finish_reason(chunks: list[dict[str, Any]]) -> str | None:
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert all(reason is None for reason in reasons[:-1])
    return reasons[-1]


def templated_prompt_tokens(vocab, messages: list[dict[str, str]]) -> list[int]:
    """The chat template from the GGUF rendered with plain jinja2, then tokenized."""
    template = vocab.metadata["tokenizer.chat_template"]
    prompt = (
        ImmutableSandboxedEnvironment()
        .from_string(template)
        .render(messages=messages, add_generation_prompt=True)
    )
    # SmolLM2's template starts every turn with <|im_start|>, its BOS token: no extra BOS.
    assert prompt.startswith(vocab._model.token_get_text(vocab.token_bos()))
    return vocab.tokenize(prompt.encode(), add_bos=False, special=True)


# -- chat completions ----------------------------------------------------------------


def test_chat_completion_answers_the_question_with_exact_usage(api, vocab):
    body = chat(api, model=CHAT_ID, messages=FRANCE, temperature=0, max_tokens=30)

    assert body["object"] == "chat.completion"
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body["id"])
    assert body["model"] == CHAT_ID
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    answer = choice["message"]["content"]
    assert "Paris" in answer
    assert choice["finish_reason"] == "stop"  # the model ended its answer itself

    usage = body["usage"]
    assert usage["prompt_tokens"] == len(templated_prompt_tokens(vocab, FRANCE))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The answer's own tokens; the end-of-turn token is not counted or shown.
    assert usage["completion_tokens"] == len(
        vocab.tokenize(answer.encode(), add_bos=False, special=False)
    )
    assert "<|im_end|>" not in answer

    again = chat(api, messages=FRANCE, temperature=0, max_tokens=30)
    repeated = again["choices"][0]["message"]["content"]
    assert "Paris" in repeated
    assert again["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    assert again["usage"]["completion_tokens"] == len(
        vocab.tokenize(repeated.encode(), add_bos=False, special=False)
    )


def test_hitting_max_tokens_finishes_with_length_and_counts_exactly(api, vocab):
    body = chat(api, messages=STORY, temperature=0, max_tokens=12)

    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    text = choice["message"]["content"]
    assert len(vocab.tokenize(text.encode(), add_bos=False, special=False)) == 12
    assert body["usage"]["prompt_tokens"] == len(templated_prompt_tokens(vocab, STORY))
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


def test_max_completion_tokens_is_accepted_as_max_tokens(api):
    body = chat(api, messages=STORY, temperature=0, max_completion_tokens=5)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_streaming_yields_the_answer_in_chunks_like_non_streaming(api):
    request = {"messages": STORY, "temperature": 0, "seed": 1234, "max_tokens": 25}
    whole = chat(api, **request)

    chunks = stream(api, **request, stream_options={"include_usage": True})

    assert streamed_text(chunks).strip()
    assert finish_reason(chunks) == whole["choices"][0]["finish_reason"] == "length"
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", ids.pop())
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == CHAT_ID
        assert isinstance(chunk["created"], int)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = chunks[1:-2]
    assert content_chunks, "no content was streamed"
    for chunk in content_chunks:
        [choice] = chunk["choices"]
        assert choice["index"] == 0
        assert set(choice["delta"]) == {"content"}
        assert choice["finish_reason"] is None
    # The finish chunk, then the usage chunk with no choices.
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 25
    assert usage["prompt_tokens"] == whole["usage"]["prompt_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + 25


def test_streaming_without_include_usage_has_no_usage_chunk(api):
    chunks = stream(api, messages=STORY, temperature=0, max_tokens=5)
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)
    assert finish_reason(chunks) == "length"


@pytest.mark.parametrize("stop", ["5", "3, 4", ["7", ", 2"]])
def test_stop_sequences_are_never_part_of_the_text(api, stop):
    stops = [stop] if isinstance(stop, str) else stop
    request = {"messages": COUNT, "temperature": 0, "max_tokens": 40, "stop": stop}

    body = chat(api, **request)
    chunks = stream(api, **request)

    text = body["choices"][0]["message"]["content"]
    streamed = streamed_text(chunks)
    assert text.startswith("1")
    assert streamed.startswith("1")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert finish_reason(chunks) == "stop"
    for piece in stops:
        assert piece not in text
        assert piece not in streamed
    # Without the stop sequence the model does write it.
    unstopped = chat(api, messages=COUNT, temperature=0, max_tokens=40)
    assert any(piece in unstopped["choices"][0]["message"]["content"] for piece in stops)


def test_two_concurrent_streams_both_finish(api):
    results: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with httpx.Client(base_url=api.base_url, headers=api.headers, timeout=120) as own:
                results[index] = stream(
                    own,
                    messages=[{"role": "user", "content": f"Write a poem about {index} cats."}],
                    temperature=0.7,
                    seed=index,
                    max_tokens=30,
                    stream_options={"include_usage": True},
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert set(results) == {1, 2}
    for chunks in results.values():
        assert finish_reason(chunks) in ("stop", "length")
        assert streamed_text(chunks)
        usage = chunks[-1]["usage"]
        assert 0 < usage["completion_tokens"] <= 30
        if finish_reason(chunks) == "length":
            assert usage["completion_tokens"] == 30
    assert results[1][0]["id"] != results[2][0]["id"]


# -- embeddings ----------------------------------------------------------------------

SENTENCES = [
    "A man is playing a guitar.",
    "A person plays the guitar on stage.",
    "The stock market fell sharply on Tuesday.",
]


def test_embeddings_are_normalised_and_meaningful(api):
    body = assert_ok(api.post(EMBEDDINGS, json={"model": EMBED_ID, "input": SENTENCES}))

    assert body["object"] == "list"
    assert body["model"] == EMBED_ID
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    guitar, stage, market = vectors
    assert guitar @ stage > 0.5
    assert guitar @ stage > guitar @ market + 0.3
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3 * 5


def test_embedding_a_single_string_equals_embedding_it_in_a_list(api):
    single = assert_ok(api.post(EMBEDDINGS, json={"input": SENTENCES[0]}))
    batch = assert_ok(api.post(EMBEDDINGS, json={"input": SENTENCES}))
    assert len(single["data"]) == 1
    # Batching changes the float arithmetic a little, not the vector.
    np.testing.assert_allclose(
        single["data"][0]["embedding"], batch["data"][0]["embedding"], atol=1e-4
    )
    assert np.dot(single["data"][0]["embedding"], batch["data"][0]["embedding"]) > 0.9999


def test_base64_embeddings_decode_to_the_float_ones(api):
    floats = assert_ok(api.post(EMBEDDINGS, json={"input": SENTENCES}))
    encoded = assert_ok(
        api.post(EMBEDDINGS, json={"input": SENTENCES, "encoding_format": "base64"})
    )

    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(packed["embedding"], str)
        raw = base64.b64decode(packed["embedding"], validate=True)
        assert len(raw) == 384 * 4
        decoded = np.frombuffer(raw, dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(plain["embedding"], dtype=np.float32))


# -- models, health, metrics ---------------------------------------------------------


def test_models_lists_the_chat_and_the_embedding_model(api):
    body = assert_ok(api.get("/v1/models"))
    assert body["object"] == "list"
    assert [item["id"] for item in body["data"]] == [CHAT_ID, EMBED_ID]
    for item in body["data"]:
        assert item["object"] == "model"
        assert isinstance(item["created"], int)
        assert item["owned_by"]


def test_healthz_needs_no_key_and_reports_the_cpu(inference_service):
    body = assert_ok(httpx.get(inference_service.url + "/healthz", timeout=10))
    assert body["status"] == "ok"
    assert body["device"] == "cpu"
    assert body["chat_model"] == CHAT_ID
    assert body["embedding_model"] == EMBED_ID
    assert body["n_ctx"] == 8192
    assert body["gpu_layers"] == 0
    assert body["model_layers"] > 0
    assert body["queue"] == 0


LABEL = r'[a-z_]+="[^"]*"'
PROMETHEUS_LINE = re.compile(
    rf"^(# (HELP|TYPE) \w+ .+|[a-zA-Z_:][a-zA-Z0-9_:]*(\{{{LABEL}(,{LABEL})*\}})? -?[0-9.e+]+)$"
)


def test_metrics_are_prometheus_text(api, inference_service):
    chat(api, messages=STORY, temperature=0, max_tokens=3)  # at least one completion

    def scrape() -> tuple[httpx.Response, dict[str, float]] | None:
        response = httpx.get(inference_service.url + "/metrics", timeout=10)
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in response.text.splitlines()
            if line and not line.startswith("#")
        }
        # The worker lets go of a job just after its answer went out.
        idle = values.get('appliance_inference_running{kind="chat"}') == 0
        return (response, values) if idle else None

    response, values = wait_until(scrape, timeout=30, what="an idle chat worker")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    for line in lines:
        assert PROMETHEUS_LINE.match(line), line
    assert "# TYPE appliance_inference_queue_length gauge" in lines
    assert values['appliance_inference_queue_length{kind="chat"}'] == 0
    assert values['appliance_inference_queue_length{kind="embeddings"}'] == 0
    assert values['appliance_inference_requests_total{kind="chat",status="completed"}'] >= 1
    assert values["appliance_inference_completion_tokens_total"] >= 3
    assert values["appliance_inference_tokens_per_second"] > 0


# -- auth and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer"},
        {"Authorization": "wrong-key"},
    ],
    ids=["missing", "wrong", "empty", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", CHAT, {"messages": STORY, "max_tokens": 1}),
        ("POST", EMBEDDINGS, {"input": "hello"}),
        ("GET", "/v1/models", None),
    ],
    ids=["chat", "embeddings", "models"],
)
def test_requests_without_the_right_key_are_refused(inference_service, headers, method, path, body):
    response = httpx.request(
        method, inference_service.url + path, json=body, headers=headers, timeout=10
    )
    assert_api_error(response, 401, "authentication_error")


def test_the_key_in_another_scheme_is_refused(inference_service, inference_key):
    response = httpx.post(
        inference_service.url + CHAT,
        json={"messages": STORY, "max_tokens": 1},
        headers={"Authorization": f"Basic {inference_key}"},
        timeout=10,
    )
    assert_api_error(response, 401, "authentication_error")


M = [{"role": "user", "content": "hi"}]
BAD_CHAT_REQUESTS = {
    "invalid json": (b'{"messages": [', "not valid JSON"),
    "not an object": ([M], "JSON object"),
    "messages missing": ({"max_tokens": 5}, "'messages'"),
    "messages empty": ({"messages": []}, "'messages'"),
    "messages not a list": ({"messages": "hi"}, "'messages'"),
    "message not an object": ({"messages": ["hi"]}, "messages[0]"),
    "bad role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    "content not text": ({"messages": [{"role": "user", "content": 5}]}, "content"),
    "image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "reads text only",
    ),
    "a refused parameter": ({"messages": M, "functions": []}, "'functions'"),
    "a tool call to no tool": (
        {
            "messages": M,
            "tools": [],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
        "'f'",
    ),
    "max_tokens 0": ({"messages": M, "max_tokens": 0}, "max_tokens"),
    "max_tokens above the cap": ({"messages": M, "max_tokens": 1025}, "1024"),
    "max_tokens not an integer": ({"messages": M, "max_tokens": "10"}, "max_tokens"),
    "temperature 5": ({"messages": M, "temperature": 5}, "temperature"),
    "top_p 2": ({"messages": M, "top_p": 2}, "top_p"),
    "n above inference.max_choices": ({"messages": M, "n": 5}, "'n'"),
    "too many stops": ({"messages": M, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "stream not a bool": ({"messages": M, "stream": "yes"}, "stream"),
    "another model": ({"messages": M, "model": "gpt-4o"}, CHAT_ID),
}


@pytest.mark.parametrize("case", list(BAD_CHAT_REQUESTS))
def test_malformed_chat_requests_get_400_and_the_service_keeps_serving(api, case):
    body, expected = BAD_CHAT_REQUESTS[case]
    if isinstance(body, bytes):
        response = api.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    else:
        response = api.post(CHAT, json=body)

    message = assert_api_error(response, 400, "invalid_request_error")
    assert expected in message

    after = chat(api, messages=STORY, temperature=0, max_tokens=2)
    assert after["usage"]["completion_tokens"] == 2


BAD_EMBEDDING_REQUESTS = {
    "input missing": ({}, "'input'"),
    "input empty": ({"input": []}, "'input'"),
    "empty string": ({"input": ["ok", ""]}, "input[1]"),
    "token ids": ({"input": [1, 2]}, "token ids"),
    "bad encoding": ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    "more dimensions than the model's": ({"input": "x", "dimensions": 385}, "384"),
    "another model": ({"input": "x", "model": "text-embedding-3-small"}, EMBED_ID),
}


@pytest.mark.parametrize("case", list(BAD_EMBEDDING_REQUESTS))
def test_malformed_embedding_requests_get_400(api, case):
    body, expected = BAD_EMBEDDING_REQUESTS[case]
    message = assert_api_error(api.post(EMBEDDINGS, json=body), 400, "invalid_request_error")
    assert expected in message
    assert len(assert_ok(api.post(EMBEDDINGS, json={"input": "still here"}))["data"]) == 1


def long_conversation(n_ctx: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "hello " * (n_ctx + 100)}]


def test_a_prompt_longer_than_the_context_window_gets_400(api, inference_service):
    n_ctx = httpx.get(inference_service.url + "/healthz", timeout=10).json()["n_ctx"]

    response = api.post(CHAT, json={"messages": long_conversation(n_ctx), "max_tokens": 5})

    message = assert_api_error(response, 400, "invalid_request_error")
    assert "context window" in message
    assert str(n_ctx) in message
    after = chat(api, messages=FRANCE, temperature=0, max_tokens=30)
    assert "Paris" in after["choices"][0]["message"]["content"]


def test_a_streamed_prompt_longer_than_the_context_window_ends_with_an_error_event(
    api, inference_service
):
    n_ctx = httpx.get(inference_service.url + "/healthz", timeout=10).json()["n_ctx"]
    request = {"messages": long_conversation(n_ctx), "max_tokens": 5, "stream": True}

    with api.stream("POST", CHAT, json=request) as response:
        payloads = sse_payloads(response)

    assert payloads[-1] == "[DONE]"
    events = [json.loads(payload) for payload in payloads[:-1]]
    assert "context window" in events[-1]["error"]["message"]
    assert not any(c.get("choices", [{}])[0].get("finish_reason") for c in events[:-1])
    assert chat(api, messages=STORY, max_tokens=2)["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, {"messages": STORY, "max_tokens": 1}), (EMBEDDINGS, {"input": "status"})],
    ids=["chat", "embeddings"],
)
def test_successful_posts_answer_200_like_openai(api, path, body):
    assert api.post(path, json=body).status_code == 200


def test_explicit_nulls_mean_the_defaults_like_openai(api):
    body = {"temperature": None, "top_p": None, "n": None, "stream": None, "max_tokens": 2}
    response = api.post(CHAT, json={"messages": STORY, **body})
    assert response.is_success, response.text


# -- the official openai client ------------------------------------------------------


@pytest.fixture(scope="module")
def openai_client(inference_service, inference_key):
    client = openai.OpenAI(
        base_url=inference_service.url + "/v1", api_key=inference_key, max_retries=0
    )
    yield client
    client.close()


def test_openai_client_chat_completion(openai_client):
    completion = openai_client.chat.completions.create(
        model=CHAT_ID, messages=FRANCE, temperature=0, max_tokens=30
    )

    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == CHAT_ID
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_openai_client_streaming_with_usage(openai_client):
    request = {
        "model": CHAT_ID,
        "messages": STORY,
        "temperature": 0,
        "seed": 7,
        "max_tokens": 20,
    }
    whole = openai_client.chat.completions.create(**request)

    chunks = list(
        openai_client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and whole.choices[0].message.content.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_openai_client_embeddings_match_the_float_api(openai_client, api):
    result = openai_client.embeddings.create(model=EMBED_ID, input=SENTENCES)
    plain = assert_ok(api.post(EMBEDDINGS, json={"input": SENTENCES}))

    assert len(result.data) == 3
    for item, expected in zip(result.data, plain["data"], strict=True):
        assert len(item.embedding) == 384
        np.testing.assert_allclose(item.embedding, expected["embedding"], rtol=0, atol=1e-7)
    assert result.usage.prompt_tokens == plain["usage"]["prompt_tokens"]


def test_openai_client_errors_map_to_its_exceptions(openai_client, inference_service):
    with pytest.raises(openai.BadRequestError, match="not served here"):
        openai_client.chat.completions.create(model="gpt-4o", messages=M, max_tokens=1)
    with (
        openai.OpenAI(
            base_url=inference_service.url + "/v1", api_key="wrong", max_retries=0
        ) as wrong,
        pytest.raises(openai.AuthenticationError, match="inference key"),
    ):
        wrong.models.list()
    assert [m.id for m in openai_client.models.list()] == [CHAT_ID, EMBED_ID]


def test_template_render_matches_llama_cpp_formatter(vocab):
    """The test's own prompt rendering agrees with llama-cpp-python's formatter."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=vocab.metadata["tokenizer.chat_template"],
        eos_token=vocab._model.token_get_text(vocab.token_eos()),
        bos_token=vocab._model.token_get_text(vocab.token_bos()),
    )
    formatted = formatter(messages=FRANCE)
    assert vocab.tokenize(formatted.prompt.encode(), add_bos=False, special=True) == (
        templated_prompt_tokens(vocab, FRANCE)
    )


def test_the_service_logs_json_lines_only(inference_service):
    # Litestar's default logging config would replace the CLI's (privacy/logs.py) and
    # print uvicorn's lines as plain text; every line is one JSON object.
    lines = [line for line in inference_service.log().splitlines() if line.strip()]
    assert any("Uvicorn running" in line for line in lines)
    for line in lines:
        assert isinstance(json.loads(line), dict), line


LLAMA_LOG = """
import sys
import llama_cpp
from appliance.inference.loader import route_llama_log
from appliance.privacy import logs

logs.configure("info", sys.stdout)
route_llama_log()
params = llama_cpp.llama_model_default_params()
assert not llama_cpp.llama_model_load_from_file(b"/nowhere/model.gguf", params)
llama_cpp.llama_model_free(llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params))
"""


def test_llama_cpps_own_log_leaves_the_service_as_json_warnings_and_errors_only(models_dir):
    # Unrouted, llama-cpp-python prints each of llama.cpp's lines raw to stderr until the
    # first Llama(verbose=False): a CUDA build's ggml_cuda_init at the service's start,
    # and here a failed load and a model load's hundred-line metadata dump.
    (chat,) = models_dir.glob("SmolLM2*.gguf")
    run = subprocess.run(
        [sys.executable, "-c", LLAMA_LOG, str(chat)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in (run.stdout + run.stderr).splitlines()]
    assert {(r["logger"], r["level"]) for r in records} == {("llama.cpp", "error")}
    messages = [r["msg"] for r in records]
    assert any("failed to open GGUF file '/nowhere/model.gguf'" in m for m in messages)
    assert not any("general.architecture" in m for m in messages)  # the info dump: dropped
