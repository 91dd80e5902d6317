"""``Metered`` (what /v1 and the chat page use): a stream abandoned after some tokens is
charged for what it produced; a request that fails before any token, or a stream the
inference service breaks off (it crashed), is charged nothing."""

from __future__ import annotations

import os
import signal

import anyio
import pytest
from conftest import free_port, link_models, make_settings, start_inference

from appliance.billing import ledger, service
from appliance.billing.metering import Metered
from appliance.db import open_db
from appliance.errors import Unavailable
from appliance.inference.client import InferenceClient
from appliance.web.identity import Identity

PRICES = {
    "billing.enabled": True,
    "billing.price_prompt_per_1k": 0.0,
    "billing.price_completion_per_1k": 1.0,  # 1 000 µ$ per completion token
}


def identity(db, clock):
    from appliance.accounts import service as accounts

    user, account = accounts.create_user(db, "o@example.com", clock(), account_name="A")
    return Identity(user=user, account=account, role="owner")


class Instance:
    id = "ins_x"
    model = "chat"


def payload(max_tokens: int) -> dict:
    return {
        "messages": [{"role": "user", "content": "Count from one to fifty."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


@pytest.mark.inference
def test_an_abandoned_stream_is_charged_for_the_tokens_it_produced(linked_settings, db, clock):
    settings = make_settings(linked_settings.paths.data_dir, **PRICES)
    who = identity(db, clock)
    service.adjust(db, who.account.id, "1", "credit", clock())
    client = InferenceClient.from_settings(settings)

    async def run() -> int:
        metered = await Metered.start(
            db, settings, client, who.account.id, None, Instance(), payload(32), clock
        )
        assert ledger.held(db, who.account.id) == 32_000
        seen = 0
        stream = metered.observe(client).astream_chat(payload(32), account_id=who.account.id)
        async for chunk in stream:
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                seen += 1
            if seen == 3:
                break  # the client hangs up
        await stream.aclose()
        return seen

    produced = anyio.run(run)
    (entry,) = ledger.entries(db, who.account.id, kinds=("usage",))
    assert entry.completion_tokens == produced == 3
    assert entry.amount_microusd == -3_000
    assert ledger.held(db, who.account.id) == 0


def test_a_request_that_fails_before_any_token_is_not_charged(settings, db, clock):
    dead = make_settings(
        settings.paths.data_dir, **{"inference.url": f"http://127.0.0.1:{free_port()}"}
    )
    who = identity(db, clock)
    client = InferenceClient.from_settings(dead)

    async def run() -> None:
        metered = await Metered.start(
            db, dead, client, who.account.id, None, Instance(), payload(8), clock
        )
        try:
            await client.achat(payload(8), account_id=who.account.id)
        except Exception:
            await metered.finish(None)
            raise

    with pytest.raises(Unavailable):
        anyio.run(run)
    conn = open_db(dead)
    states = conn.execute("select state from billing_holds").fetchall()
    conn.close()
    assert states == [("released",)]
    assert ledger.entries(db, who.account.id) == []


@pytest.mark.inference
def test_a_stream_cut_by_an_inference_crash_is_not_charged(settings, models_dir, db, clock):
    link_models(settings, models_dir)
    own = start_inference(settings)  # to kill
    try:
        billed = make_settings(settings.paths.data_dir, **PRICES, **{"inference.url": own.url})
        who = identity(db, clock)
        service.adjust(db, who.account.id, "1", "credit", clock())
        client = InferenceClient.from_settings(billed)
        story = {
            "messages": [
                {"role": "user", "content": "Write a very long story about a lighthouse."}
            ],
            "max_tokens": 400,
            "temperature": 0,
        }

        async def run() -> int:
            metered = await Metered.start(
                db, billed, client, who.account.id, None, Instance(), story, clock
            )
            seen = 0
            stream = metered.observe(client).astream_chat(story, account_id=who.account.id)
            async for chunk in stream:
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    seen += 1
                if seen == 3:
                    os.kill(own.process.pid, signal.SIGSEGV)  # the model's process crashes
            return seen

        with pytest.raises(Unavailable, match="stopped in the middle of this answer"):
            anyio.run(run)
        assert own.process.wait(30) == -signal.SIGSEGV
    finally:
        own.stop()
    assert ledger.held(db, who.account.id) == 0
    assert ledger.entries(db, who.account.id, kinds=("usage",)) == []
    states = [row["state"] for row in db.query("select state from billing_holds")]
    assert states == ["released"]
