"""Two JSON schemas any key holder could send in ``response_format`` took the inference
service down, for every user, until it was restarted:

- a ``pattern`` holding a ``]`` or ``}`` that closes nothing (a literal in a regular
  expression) made llama-cpp-python's schema converter loop forever on the service's event
  loop: no request was answered again;
- a ``maxLength`` (or ``maxItems`` …) in the tens of thousands became a grammar nested so
  deep that llama.cpp's parser overflowed its stack: the process died (SIGSEGV).

Patterns are now rewritten before they are converted and counts above
``structured.MAX_REPEAT`` are refused with a 400 (``appliance/inference/structured.py``)."""

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import discard, start_inference

from appliance import vault

pytestmark = pytest.mark.inference

PATTERN = r"^[a-z]{2}\d]}$"


@pytest.fixture(scope="module")
def api(inference_settings) -> Iterator[httpx.Client]:
    service = start_inference(inference_settings)  # its own: the old code took it down
    key = vault.read_secret(inference_settings, "inference_key")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
            yield client
    finally:
        discard(service.process)


def ask(api: httpx.Client, schema: dict) -> httpx.Response:
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    body = {
        "messages": [{"role": "user", "content": "Make up a code."}],
        "max_tokens": 24,
        "response_format": response_format,
    }
    return api.post("/v1/chat/completions", json=body)


def test_a_stray_bracket_in_a_pattern_is_enforced_and_the_service_keeps_answering(api):
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": PATTERN}},
        "required": ["code"],
    }
    answer = ask(api, schema)
    assert answer.status_code == 200, answer.text
    value = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert re.fullmatch(PATTERN, value["code"]), value
    assert api.get("/healthz").status_code == 200


def test_a_huge_max_length_is_refused_and_the_service_stays_up(api):
    answer = ask(api, {"type": "string", "maxLength": 30000})
    assert answer.status_code == 400, answer.text
    assert "'maxLength' above 1000" in answer.json()["error"]["message"]
    assert api.get("/healthz").status_code == 200
