"""Metering on the OpenAI-compatible /v1 endpoint with the real tiny model."""

from __future__ import annotations

import threading

import pytest
from billing_support import billing_config, stripe_standin  # noqa: F401 - fixture
from conftest import in_threads, make_settings, managed_app
from litestar.testing import TestClient

from appliance.billing import ledger, service

pytestmark = pytest.mark.inference

PROMPT = [{"role": "user", "content": "Count from one to fifty, separated by commas."}]


@pytest.fixture
def v1_app(linked_settings, models_dir, stripe_standin, db, clock):  # noqa: F811
    """Makes the app with these ``[billing]`` settings (Stripe: the stand-in), an instance
    'assistant' of 4 tokens and an inference key: (app, account id, key)."""

    def make(*, enabled: bool, **billing):
        config = linked_settings.paths.data_dir / "appliance.toml"
        base = config.read_text().split("[billing]")[0]
        config.write_text(base + billing_config(stripe_standin.url, enabled=enabled, **billing))
        settings = make_settings(linked_settings.paths.data_dir)
        with managed_app(settings, models_dir, db, clock) as (app, account_id, client):
            created = client.post(
                "/api/instances", json={"name": "assistant", "max_tokens": 4, "knowledge": False}
            )
            assert created.status_code == 201, created.text
            key = client.post("/api/keys", json={"name": "k", "scope": "inference"}).json()
        return app, account_id, key

    return make


def ask(app, key: str, http: TestClient | None = None, **extra):
    http = http or TestClient(app)
    return http.post(
        "/v1/chat/completions",
        json={"model": "assistant", "messages": PROMPT, "max_tokens": 4, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_parallel_requests_against_a_balance_for_five(v1_app, stripe_standin, db, clock):  # noqa: F811
    # Only completion tokens cost (1 000 µ$ each), so a request's hold (max_tokens=4) is
    # exactly what it costs when the model writes its 4 tokens.
    app, account_id, key = v1_app(
        enabled=True, price_prompt_per_1k=0.0, price_completion_per_1k=1.0
    )
    service.adjust(db, account_id, "0.02", "credit for five requests", clock())
    barrier = threading.Barrier(20)
    responses = []

    # One client, one event loop (like the web service): the requests run concurrently.
    with TestClient(app) as http:

        def one() -> None:
            barrier.wait()
            responses.append(ask(app, key["key"], http))

        in_threads([one] * 20)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [402] * 15, [r.text for r in responses if r.status_code != 402]
    refused = next(r for r in responses if r.status_code == 402).json()
    assert refused["error"]["type"] == "insufficient_quota"
    assert refused["error"]["code"] == "insufficient_quota"
    assert "credit" in refused["error"]["message"]
    balance = ledger.balance(db, account_id)
    assert balance >= 0 and balance == ledger.ledger_sum(db, account_id)
    assert ledger.held(db, account_id) == 0
    usage = ledger.entries(db, account_id, kinds=("usage",))
    assert len(usage) == 5 and all(e.key_id == key["id"] for e in usage)
    assert sum(e.completion_tokens for e in usage) * 1000 == 20_000 - balance
    assert stripe_standin.requests == []


def test_streaming_is_settled_from_its_usage(v1_app, db, clock):
    app, account_id, key = v1_app(enabled=True)
    service.adjust(db, account_id, "1", "credit", clock())
    response = ask(app, key["key"], stream=True)
    assert response.status_code == 200 and "[DONE]" in response.text
    (entry,) = ledger.entries(db, account_id, kinds=("usage",))
    assert entry.completion_tokens > 0 and entry.prompt_tokens > 0
    assert entry.amount_microusd < 0
    assert ledger.held(db, account_id) == 0
    assert ledger.balance(db, account_id) == ledger.ledger_sum(db, account_id)


def test_billing_off_chat_works_and_no_stripe_request_is_made(v1_app, stripe_standin, db):  # noqa: F811
    app, account_id, key = v1_app(enabled=False)
    response = ask(app, key["key"])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    (entry,) = ledger.entries(db, account_id, kinds=("usage",))
    assert entry.amount_microusd == 0 and entry.completion_tokens > 0  # metered, not charged
    assert ledger.balance(db, account_id) == 0
    assert stripe_standin.requests == []


def test_a_refused_chat_turn_is_logged_with_its_instance(
    linked_settings,
    models_dir,
    stripe_standin,  # noqa: F811
    db,
    clock,
):
    """Out of credit: the 402 is in the request log under the instance it was for."""
    config = linked_settings.paths.data_dir / "appliance.toml"
    base = config.read_text().split("[billing]")[0]
    config.write_text(base + billing_config(stripe_standin.url, enabled=True))
    settings = make_settings(linked_settings.paths.data_dir)
    with managed_app(settings, models_dir, db, clock) as (_app, _account_id, client):
        instance = client.post("/api/instances", json={"name": "a", "knowledge": False}).json()
        conversation = client.post("/api/conversations", json={"instance_id": instance["id"]})
        path = f"/api/conversations/{conversation.json()['id']}/messages"
        refused = client.post(path, json={"content": "Hello?"})
    assert refused.status_code == 402, refused.text
    logged = db.execute(
        "select instance_id from request_log where status = 402 and path = ?",
        ["/api/conversations/{conversation_id}/messages"],
    ).fetchall()
    assert logged == [(instance["id"],)]
