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
from appliance.errors import PaymentRequired, Unavailable
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
        metered = Metered.reserve(
            db, settings, who.account.id, None, Instance(), payload(32), clock, 9
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
        metered = Metered.reserve(db, dead, who.account.id, None, Instance(), payload(8), clock, 9)
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
            metered = Metered.reserve(
                db, billed, who.account.id, None, Instance(), story, clock, 12
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


PROMPT_PRICES = {
    "billing.enabled": True,
    "billing.price_prompt_per_1k": 1.0,  # 1 000 µ$ per prompt token
    "billing.price_completion_per_1k": 0.0,
}


def bounded(db, settings, who, clock, body: dict, bound: int, recount) -> Metered:
    """A hold for ``body`` on a prompt of at most ``bound`` tokens that ``recount`` counts."""
    return Metered.reserve(
        db,
        settings,
        who.account.id,
        None,
        Instance(),
        body,
        clock,
        prompt_tokens=bound,
        recount=recount,
    )


def test_a_bound_the_balance_refuses_is_held_on_the_count(settings, db, clock):
    """A prompt that fit on byte bounds (``Composed.recount``) is held on its bound; when
    the balance does not cover that, it is counted, and held if the count fits."""
    priced = make_settings(settings.paths.data_dir, **PROMPT_PRICES)
    who = identity(db, clock)
    service.adjust(db, who.account.id, "0.05", "credit", clock())  # 50 prompt tokens
    counts = []

    def recount(tokens: int):
        return lambda: counts.append(tokens) or tokens

    def start(bound: int, count: int) -> Metered:
        return bounded(db, priced, who, clock, payload(1), bound, recount(count))

    held = start(40, 10)  # the bound fits: nothing is counted
    assert counts == [] and ledger.held(db, who.account.id) == 40_000
    anyio.run(held.finish, None)
    refused_bound = start(400, 30)
    assert counts == [30] and ledger.held(db, who.account.id) == 30_000
    assert refused_bound.prompt_tokens == 30 and refused_bound.recount is None
    anyio.run(refused_bound.finish, None)
    with pytest.raises(PaymentRequired):
        start(400, 60)
    assert counts == [30, 60] and ledger.held(db, who.account.id) == 0


def test_a_stream_stopped_before_its_usage_is_charged_the_counted_prompt(settings, db, clock):
    priced = make_settings(settings.paths.data_dir, **PROMPT_PRICES)
    who = identity(db, clock)
    service.adjust(db, who.account.id, "1", "credit", clock())

    def stopped(recount) -> int:
        async def run() -> None:
            metered = bounded(db, priced, who, clock, payload(8), 500, recount)
            await metered.finish(None, 3)  # three chunks, then the client hung up

        anyio.run(run)
        return ledger.entries(db, who.account.id, kinds=("usage",))[0].prompt_tokens

    assert stopped(lambda: 12) == 12

    def service_gone() -> int:
        raise Unavailable("The inference service is not answering.")

    assert stopped(service_gone) == 500  # not counted: the bound, never less
    assert ledger.held(db, who.account.id) == 0
