"""The service's queue under load: 503 and 429 with Retry-After, cancellation, fairness.

Each test starts its own small inference service (the real models) so that its queue
settings and counters are its own. A long streaming request keeps the model busy while
the test queues others; closing that stream ends it early, which keeps the tests short.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from conftest import discard, link_models, make_settings, start_inference, wait_until

from appliance import vault
from appliance.cli import initialise
from appliance.inference.client import ACCOUNT_HEADER

pytestmark = pytest.mark.inference

CHAT = "/v1/chat/completions"
LONG = {
    "messages": [
        {"role": "user", "content": "Write a very long story about a dragon and a knight."}
    ],
    "temperature": 0.8,
    "seed": 3,
    "stream": True,
}
SHORT = {
    "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
    "temperature": 0,
    "max_tokens": 20,
}


class SmallService:
    """A started inference service, its key, and helpers to read its metrics."""

    def __init__(self, service, key: str) -> None:
        self.service = service
        self.url = service.url
        self.key = key

    def headers(self, account: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if account:
            headers[ACCOUNT_HEADER] = account
        return headers

    def client(self, account: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(account), timeout=120)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def metric(self, name: str, **labels: str) -> float:
        inner = ",".join(f'{key}="{value}"' for key, value in {"kind": "chat", **labels}.items())
        return self.metrics()[f"{name}{{{inner}}}"]

    def wait_for(self, name: str, value: float, timeout: float = 30, **labels: str) -> None:
        wait_until(
            lambda: self.metric(name, **labels) == value,
            timeout=timeout,
            interval=0.05,
            what=f"{name}{labels or ''} == {value}",
        )


@pytest.fixture
def small_service(tmp_path, models_dir) -> Iterator:
    """Start services with the given settings (env) on fresh data dirs; stop them after."""
    started = []

    def start(**env: str) -> SmallService:
        settings = make_settings(tmp_path / f"data-{len(started)}")
        link_models(settings, models_dir)
        initialise(settings)
        # One sequence slot, so that requests queue behind a running one (with more,
        # the batched engine runs them at once: tests/inference/test_batching.py).
        service = start_inference(settings, **{"APPLIANCE_INFERENCE__PARALLEL": "1", **env})
        started.append(service)
        return SmallService(service, vault.read_secret(settings, "inference_key"))

    yield start
    for service in started:
        discard(service.process)


class OpenStream:
    """A streaming request held open; ``start`` returns once the service accepted it."""

    def __init__(self, service: SmallService, body: dict, account: str | None = None) -> None:
        self._stack = contextlib.ExitStack()
        self.client = self._stack.enter_context(service.client(account))
        self.response = self._stack.enter_context(
            self.client.stream("POST", CHAT, json={**body, "stream": True})
        )
        self.lines = self.response.iter_lines()

    def chunks(self, count: int) -> list[dict]:
        """Read ``count`` chunks (the first is the role chunk)."""
        read = []
        while len(read) < count:
            line = next(self.lines)
            if line.startswith("data: "):
                read.append(json.loads(line[6:]))
        return read

    def rest(self) -> list[str]:
        """The remaining ``data:`` payloads, up to the end of the stream."""
        return [line[6:] for line in self.lines if line.startswith("data: ")]

    def close(self) -> None:
        self._stack.close()


def assert_retry_error(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert re.fullmatch(r"[1-9][0-9]*", response.headers["Retry-After"])
    error = response.json()["error"]
    assert error["type"] == kind
    assert error["code"] == {429: "rate_limit_exceeded", 503: "service_unavailable"}[status]
    assert error["message"]


def test_a_full_queue_answers_503_with_retry_after(small_service):
    service = small_service(APPLIANCE_INFERENCE__QUEUE_SIZE="1")
    running = OpenStream(service, {**LONG, "max_tokens": 400}, account="a")
    waiting = None
    try:
        assert running.response.status_code // 100 == 2
        running.chunks(3)  # generating
        service.wait_for("appliance_inference_running", 1)
        waiting = OpenStream(service, {**SHORT, "max_tokens": 5}, account="b")
        assert waiting.response.status_code // 100 == 2
        service.wait_for("appliance_inference_queue_length", 1)

        with service.client("c") as third:
            refused = third.post(CHAT, json=SHORT)
            refused_embedding = third.post("/v1/embeddings", json={"input": "other queue"})

        assert_retry_error(refused, 503, "server_busy")
        assert "busy" in refused.json()["error"]["message"]
        assert service.metric("appliance_inference_requests_total", status="rejected_full") == 1
        # Embeddings have a queue of their own, which is empty.
        assert refused_embedding.is_success, refused_embedding.text

        running.close()  # frees the model for the waiting request
        payloads = waiting.rest()
        assert payloads[-1] == "[DONE]"
        finish = [json.loads(p) for p in payloads[:-1] if json.loads(p)["choices"]][-1]
        assert finish["choices"][0]["finish_reason"] == "length"
    finally:
        running.close()
        if waiting:
            waiting.close()
    with service.client("c") as later:
        assert later.post(CHAT, json={**SHORT, "max_tokens": 2}).is_success


def test_an_account_over_its_limit_gets_429_with_retry_after(small_service):
    service = small_service(
        APPLIANCE_INFERENCE__QUEUE_SIZE="1",
        APPLIANCE_INFERENCE__PER_ACCOUNT_QUEUE="1",
        APPLIANCE_INFERENCE__ACCOUNT_WAIT_SECONDS="0.5",
    )
    running = OpenStream(service, {**LONG, "max_tokens": 400}, account="alice")
    other = None
    try:
        running.chunks(2)
        service.wait_for("appliance_inference_running", 1)

        with service.client("alice") as alice:
            refused = alice.post(CHAT, json=SHORT)
        assert_retry_error(refused, 429, "rate_limit_error")
        assert "limit 1) after waiting 0.5 s" in refused.json()["error"]["message"]
        assert service.metric("appliance_inference_requests_total", status="rejected_account") == 1

        # Another account is still let in (it waits for the model).
        other = OpenStream(service, {**SHORT, "max_tokens": 5}, account="bob")
        assert other.response.status_code // 100 == 2
        service.wait_for("appliance_inference_queue_length", 1)
        running.close()
        assert other.rest()[-1] == "[DONE]"
    finally:
        running.close()
        if other:
            other.close()
    # Alice's place is free again once her request ended.
    service.wait_for("appliance_inference_running", 0)
    with service.client("alice") as alice:
        assert alice.post(CHAT, json={**SHORT, "max_tokens": 2}).is_success


def test_a_disconnected_stream_frees_its_slot_at_once(small_service):
    service = small_service(
        APPLIANCE_INFERENCE__QUEUE_SIZE="1", APPLIANCE_INFERENCE__PER_ACCOUNT_QUEUE="1"
    )
    # 1000 tokens would take the tiny model many seconds on this CPU.
    stream = OpenStream(service, {**LONG, "max_tokens": 1000}, account="alice")
    try:
        chunks = stream.chunks(3)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[1]["choices"][0]["delta"]["content"]
        assert service.metric("appliance_inference_running") == 1
    finally:
        stream.close()

    service.wait_for("appliance_inference_running", 0)
    service.wait_for("appliance_inference_queue_length", 0)
    assert service.metric("appliance_inference_requests_total", status="cancelled") == 1
    assert service.metric("appliance_inference_requests_total", status="completed") == 0
    generated = service.metrics()["appliance_inference_completion_tokens_total"]
    assert 2 <= generated < 1000  # stopped early, not run to the end

    # The same account (limit 1) is admitted again and served straight away.
    with service.client("alice") as alice:
        response = alice.post(CHAT, json={**SHORT, "max_tokens": 5})
    assert response.is_success, response.text
    assert response.json()["usage"]["completion_tokens"] == 5
    assert service.metric("appliance_inference_requests_total", status="completed") == 1
    # Nothing went on generating for the closed stream in the meantime.
    assert service.metrics()["appliance_inference_completion_tokens_total"] == generated + 5


def test_a_non_streaming_request_whose_client_gave_up_is_cancelled(small_service):
    service = small_service(APPLIANCE_INFERENCE__PER_ACCOUNT_QUEUE="1")
    body = {**LONG, "stream": False, "max_tokens": 1000}
    impatient = httpx.Client(
        base_url=service.url, headers=service.headers("alice"), timeout=httpx.Timeout(30, read=1)
    )
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(CHAT, json=body)  # the client closes the connection on timeout

    service.wait_for("appliance_inference_requests_total", 1, status="cancelled")
    service.wait_for("appliance_inference_running", 0)
    assert service.metric("appliance_inference_requests_total", status="completed") == 0
    assert service.metrics()["appliance_inference_completion_tokens_total"] < 1000
    with service.client("alice") as alice:
        assert alice.post(CHAT, json={**SHORT, "max_tokens": 3}).is_success


def test_one_accounts_burst_does_not_delay_anothers_request(small_service):
    service = small_service()  # queue 32, 8 per account
    finished: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def ask(name: str, account: str) -> None:
        try:
            with service.client(account) as client:
                response = client.post(CHAT, json=SHORT)
            assert response.is_success, response.text
            assert response.json()["usage"]["completion_tokens"] == 20
            with lock:
                finished.append(name)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    blocker = OpenStream(service, {**LONG, "max_tokens": 1000}, account="x")
    threads = []
    try:
        blocker.chunks(2)
        service.wait_for("appliance_inference_running", 1)
        for count, (name, account) in enumerate(
            [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")], start=1
        ):
            thread = threading.Thread(target=ask, args=(name, account))
            thread.start()
            threads.append(thread)
            service.wait_for("appliance_inference_queue_length", count)  # queued in order
    finally:
        blocker.close()
    for thread in threads:
        thread.join(120)

    assert not errors, errors
    assert finished.index("b1") < finished.index("a3")
    assert finished == ["a1", "b1", "a2", "a3"]  # round-robin between accounts
