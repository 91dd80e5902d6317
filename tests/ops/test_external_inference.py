"""Scaling beyond one box: inference.url pointed at an OpenAI-compatible server the
operator runs (vLLM, llama.cpp's server). A small local stand-in answers the way they do:
/v1/models, /v1/chat/completions, /v1/embeddings, no /healthz, and a /tokenize that wants
another body. What the appliance needs from it keeps working."""

from __future__ import annotations

import json

import pytest
from conftest import JSONHandler, make_settings, serving
from litestar.testing import TestClient

from appliance.inference.client import InferenceClient
from appliance.ops import overview
from appliance.web import create_app


class Handler(JSONHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        if self.path == "/v1/models":
            self.send_json({"object": "list", "data": [{"id": "qwen2.5-7b", "object": "model"}]})
        else:
            self.send_json({"detail": "Not Found"}, 404)

    def do_POST(self) -> None:
        self.seen.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":  # llama.cpp's server wants {"content": "..."}
            self.send_json({"error": {"message": "'content' is required"}}, 400)
        elif self.path == "/v1/embeddings":
            data = [{"index": i, "embedding": [0.5, 0.5]} for i, _ in enumerate(body["input"])]
            self.send_json({"object": "list", "data": data})
        elif self.path == "/v1/chat/completions":
            message = {"role": "assistant", "content": "Hello from vLLM."}
            self.send_json(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                }
            )
        else:
            self.send_json({"detail": "Not Found"}, 404)


@pytest.fixture
def external():
    Handler.seen = []
    with serving(Handler) as url:
        yield url + "/v1"


def test_client_works_against_an_openai_compatible_server(external, tmp_path):
    client = InferenceClient(external.removesuffix("/v1"), "key")
    health = client.health()
    assert health["status"] == "ok" and health["chat_model"] == "qwen2.5-7b"
    assert client.count_tokens(["one", "two"]) is None  # estimated by the caller instead
    assert client.embed(["a", "b"]) == [[0.5, 0.5], [0.5, 0.5]]
    answer = client.chat({"messages": [{"role": "user", "content": "hi"}]})
    assert answer["choices"][0]["message"]["content"] == "Hello from vLLM."


def test_readyz_and_the_operator_page_with_an_external_server(external, settings):
    linked = make_settings(settings.paths.data_dir, **{"inference.url": external})
    with TestClient(create_app(linked)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    state = overview.inference_state(linked)
    assert state["status"] == "ok" and state["chat_model"] == "qwen2.5-7b"
    assert state["tokens_per_second"] is None  # no /metrics of ours there
    assert "GET /healthz" in Handler.seen and "GET /v1/models" in Handler.seen
    lines = overview.summary_lines(
        {
            "inference": state,
            "worker": {"alive": True, "age_seconds": 5, "last_heartbeat": "x"},
            "disk": overview.disk_state(linked),
            "accounts": [],
        }
    )
    assert lines[0] == f"inference: external server {linked.inference_url} serving qwen2.5-7b"
