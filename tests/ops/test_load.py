"""Under load every request gets an answer or an honest "busy" (issue 21).

The real web service and worker in front of a real batched inference service (the
bundled models, its defaults: 8 slots, 8 requests in flight per account), on loopback.
A 5xx anywhere fails the test, and so does a 429 or 503 without ``Retry-After``.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from conftest import _live, discard, in_threads, link_models, make_settings, start_inference
from signin_support import api_key

from appliance.accounts import service as accounts
from appliance.cli import initialise
from appliance.db import open_db
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances

pytestmark = pytest.mark.inference

CHAT = {
    "model": "assistant",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 16,
    "temperature": 0,
}
NOTE = b"# Kettle\n\nThe kettle is upstairs, next to the blue mugs.\n"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory, models_dir) -> Iterator[dict]:
    """Web + worker + a batched inference service; one account with two keys."""
    root = tmp_path_factory.mktemp("load")
    model_settings = make_settings(root / "inference")
    link_models(model_settings, models_dir)
    initialise(model_settings)
    # Generous, for a loaded shared CI machine: the default is 60 s.
    inference = start_inference(model_settings, APPLIANCE_INFERENCE__ACCOUNT_WAIT_SECONDS="120")
    settings = make_settings(root / "web")
    initialise(settings)
    link_models(settings, models_dir)
    (settings.paths.secrets / "inference_key").write_text(
        (model_settings.paths.secrets / "inference_key").read_text()
    )
    (settings.paths.data_dir / "appliance.toml").write_text(
        f'[inference]\nurl = "{inference.url}"\n'
    )
    settings = make_settings(settings.paths.data_dir)
    db = open_db(settings)
    now = datetime.now(UTC)
    user, account = accounts.create_user(db, "load@example.com", now, account_name="Load")
    instances.create(
        db,
        account.id,
        "owner",
        # A short prompt: this test is about statuses, and the CI machine is shared.
        {
            "name": "assistant",
            "max_tokens": 16,
            "system_prompt": "Answer in one word.",
            "voice": False,
            "knowledge": False,
        },
        models=[DEFAULT_CHAT],
        max_tokens_cap=settings.inference.max_tokens,
        now=now,
    )
    keys = {scope: api_key(db, user, account, scope, now) for scope in ("inference", "manage")}
    db.close()
    try:
        for web in _live(settings):
            yield {"url": web.url, **keys}
    finally:
        discard(inference.process)


def client(appliance: dict, scope: str) -> httpx.Client:
    return httpx.Client(
        base_url=appliance["url"],
        headers={"Authorization": f"Bearer {appliance[scope]}"},
        timeout=180,
    )


def check(response: httpx.Response) -> None:
    """No 5xx; a refusal says when to come back."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code in (429, 503):
        assert int(response.headers["retry-after"]) > 0, response.headers


def test_a_burst_of_12_chats_from_one_account_gets_12_answers(appliance):
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def ask() -> None:
        with client(appliance, "inference") as http:
            response = http.post("/v1/chat/completions", json=CHAT)
        with lock:
            answers.append(response)

    in_threads([ask] * 12, 240)

    refused = [r.text for r in answers if r.status_code != 200]
    assert [r.status_code for r in answers] == [200] * 12, refused


def test_8_clients_for_10_s_get_no_5xx_and_every_refusal_says_when_to_retry(appliance):
    seen: Counter = Counter()
    errors: list[BaseException] = []
    deadline = time.monotonic() + 10
    lock = threading.Lock()

    def mix(seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not a secret
        try:
            with client(appliance, "manage") as api, client(appliance, "inference") as v1:
                while time.monotonic() < deadline:
                    roll = rng.random()
                    if roll < 0.6:
                        kind, response = "search", api.get("/api/search", params={"q": "kettle"})
                    elif roll < 0.8:
                        kind, response = "list", api.get("/api/documents")
                    elif roll < 0.9:
                        files = {"file": (f"note-{seed}-{rng.random()}.md", NOTE)}
                        kind, response = "upload", api.post("/api/documents", files=files)
                    else:
                        kind, response = "chat", v1.post("/v1/chat/completions", json=CHAT)
                    check(response)
                    with lock:
                        seen[kind, response.status_code] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    in_threads([functools.partial(mix, seed) for seed in range(8)], 240)

    assert not errors, errors
    assert seen["search", 200] and seen["list", 200] and seen["upload", 202], seen
