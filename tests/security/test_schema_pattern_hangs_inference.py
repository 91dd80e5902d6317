"""A JSON-schema ``pattern`` with a ``]`` or ``}`` that closes nothing (a literal in a
regular expression) made llama-cpp-python's schema converter loop forever, on the
inference service's event loop: that request was never answered, nor was any other, and
the service kept a core busy until it was restarted. Any key holder could send one. The
pattern is now rewritten before it is converted (``structured._gbnf_pattern``)."""

import json
import re

import httpx
import pytest
from conftest import discard, start_inference

from appliance import vault

pytestmark = pytest.mark.inference

PATTERN = r"^[a-z]{2}\d]}$"


def test_a_stray_bracket_in_a_pattern_is_enforced_and_the_service_keeps_answering(
    inference_settings,
):
    service = start_inference(inference_settings)  # its own: the old code hung it for good
    key = vault.read_secret(inference_settings, "inference_key")
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": PATTERN}},
        "required": ["code"],
    }
    body = {
        "messages": [{"role": "user", "content": "Make up a code."}],
        "max_tokens": 24,
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=service.url, headers=headers, timeout=30) as api:
            answer = api.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            value = json.loads(answer.json()["choices"][0]["message"]["content"])
            assert re.fullmatch(PATTERN, value["code"]), value
            assert api.get("/healthz").status_code == 200
    finally:
        discard(service.process)
