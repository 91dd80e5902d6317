"""Audit 2026-12, finding 8: ``/v1/embeddings`` was not metered and ignored spend caps, so
a key capped (or an account out of credit) could still use the embedding model for free.
Now embeddings are held and settled like chat, at ``billing.price_embedding_per_1k``."""

import pytest
from conftest import make_settings, managed_app

from appliance.billing import ledger, meter, service

pytestmark = pytest.mark.inference

TEXTS = ["The kettle is in the second cupboard.", "Invoices go out on the first Monday."]


@pytest.fixture
def billed_v1(linked_settings, models_dir, db, clock):
    """Billing on (1 USD per 1,000 embedding tokens, i.e. 1,000 µ$ a token), an instance
    'assistant', a manage key (for caps) and an inference key."""
    config = linked_settings.paths.data_dir / "appliance.toml"
    config.write_text(
        config.read_text() + "[billing]\nenabled = true\nprice_embedding_per_1k = 1.0\n"
    )
    settings = make_settings(linked_settings.paths.data_dir)
    with managed_app(settings, models_dir, db, clock) as (_, account_id, client):
        service.adjust(db, account_id, "1", "credit", clock())
        created = client.post("/api/instances", json={"name": "assistant", "knowledge": False})
        assert created.status_code == 201, created.text
        key = client.post("/api/keys", json={"name": "k", "scope": "inference"}).json()
        yield client, account_id, key


def embed(client, key):
    return client.post(
        "/v1/embeddings",
        json={"model": "assistant", "input": TEXTS},
        headers={"Authorization": f"Bearer {key['key']}"},
    )


def test_embeddings_are_charged_at_the_embedding_price(billed_v1, db):
    client, account_id, key = billed_v1
    response = embed(client, key)
    assert response.status_code == 200, response.text
    tokens = response.json()["usage"]["prompt_tokens"]
    assert tokens > len(TEXTS)
    (entry,) = ledger.entries(db, account_id, kinds=("usage",))
    assert entry.model == meter.EMBEDDINGS and entry.key_id == key["id"]
    assert entry.prompt_tokens == tokens and entry.completion_tokens == 0
    assert entry.amount_microusd == -tokens * 1000
    assert ledger.held(db, account_id) == 0
    assert ledger.balance(db, account_id) == 1_000_000 - tokens * 1000


def test_a_key_at_its_spend_cap_gets_402_for_embeddings(billed_v1, db):
    client, account_id, key = billed_v1
    assert embed(client, key).status_code == 200
    spent = -ledger.entries(db, account_id, kinds=("usage",))[0].amount_microusd
    capped = client.put(
        "/api/billing/caps", json={"key_id": key["id"], "monthly_usd": ledger.usd_precise(spent)}
    )
    assert capped.status_code == 200, capped.text
    refused = embed(client, key)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert len(ledger.entries(db, account_id, kinds=("usage",))) == 1
