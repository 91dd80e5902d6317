"""One inference request under a hold: what /v1 and the chat page run the model through.

Settling runs shielded from cancellation on its own connection, so a client that hangs up
is still charged for what it got; a hold never finished is released by the worker after
``billing.hold_timeout_seconds`` (docs/billing.md; the rules are in billing/meter.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from sqlite_utils import Database

from appliance.billing import meter
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import pooled
from appliance.errors import ApplianceError, PaymentRequired
from appliance.inference.client import InferenceClient


class Metered:
    """One inference request's hold (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        hold: meter.Hold,
        prompt_tokens: int,
        clock: Clock,
        recount: Callable[[], int] | None = None,
    ):
        self.settings = settings
        self.hold = hold
        #: The prompt's tokens, or while ``recount`` is set an upper bound of them.
        self.prompt_tokens = prompt_tokens
        self.recount = recount
        self.clock = clock
        self.finished = False
        #: OpenAI's usage object of the answer, once it is known.
        self.usage: dict[str, Any] | None = None
        #: Completion tokens produced so far (chunks with content, for a stream cut short).
        self.produced = 0

    @classmethod
    def reserve(
        cls,
        db: Database,
        settings: Settings,
        account_id: str,
        key_id: str | None,
        instance: Any,
        payload: dict[str, Any],
        clock: Clock,
        prompt_tokens: int,
        recount: Callable[[], int] | None = None,
    ) -> Metered:
        """Hold the most ``payload`` can cost (on a thread: it writes the hold). 402 when
        the balance or a spend cap does not cover it.

        ``prompt_tokens``: the prompt as counted when it was assembled, or with
        ``recount`` an upper bound of it (``Composed.recount``): the hold is taken on the
        bound, and on the count only when the bound is refused."""
        hold_for = partial(
            meter.reserve,
            db,
            settings,
            account_id=account_id,
            instance_id=instance.id,
            key_id=key_id,
            model=instance.model,
            max_completion_tokens=int(payload.get("max_tokens") or 0),
            now=clock(),
        )
        try:
            hold = hold_for(prompt_tokens=prompt_tokens)
            return cls(settings, hold, prompt_tokens, clock, recount)
        except PaymentRequired:
            if recount is None:
                raise
        counted = recount()  # the bound is refused: does the prompt itself fit?
        return cls(settings, hold_for(prompt_tokens=counted), counted, clock)

    async def __aenter__(self) -> Metered:
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        if error is not None:
            self.usage, self.produced = None, 0
        await self.finish(self.usage, self.produced)

    async def finish(self, usage: dict[str, Any] | None, produced: int = 0) -> None:
        """Settle ``usage`` (OpenAI's usage object), or ``produced`` completion tokens
        when the request ended without one; release when nothing was produced."""
        if self.finished:
            return
        self.finished = True

        def close() -> None:
            used = None
            if usage:
                used = {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
            elif produced:
                used = {"prompt_tokens": self.counted_prompt(), "completion_tokens": produced}
            with pooled(self.settings) as db:
                if used:
                    meter.settle(db, self.settings, self.hold, **used, now=self.clock())
                else:
                    meter.release(db, self.hold, now=self.clock())

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)

    def counted_prompt(self) -> int:
        """The prompt's tokens, counted now if only their bound was known (on a thread;
        the bound stands when the inference service cannot count)."""
        recount, self.recount = self.recount, None
        if recount is not None:
            with contextlib.suppress(ApplianceError):
                self.prompt_tokens = recount()
        return self.prompt_tokens

    def observe(self, inference: InferenceClient) -> _ObservedClient:
        """``inference`` for a streaming relay: the stream's usage chunk (or the count of
        chunks with content, if the client hangs up early) settles the hold when the
        stream ends. A stream the inference service itself breaks off (it crashed, or
        answered with an error) is an answer the client did not get: the hold is released
        and nothing is charged."""
        return _ObservedClient(inference, self)


class _ObservedClient:
    def __init__(self, inner: InferenceClient, metered: Metered):
        self.inner = inner
        self.metered = metered

    async def astream_chat(self, body: dict[str, Any], **kwargs: Any):
        metered = self.metered
        try:
            async for chunk in self.inner.astream_chat(body, **kwargs):
                if chunk.get("usage"):
                    metered.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        metered.produced += 1
                yield chunk
        except ApplianceError:
            metered.usage, metered.produced = None, 0
            raise
        finally:
            await metered.finish(metered.usage, metered.produced)


def token_counts(inference: InferenceClient, texts: list[str], model: str) -> list[int]:
    """Token counts in the model's tokenizer, or an estimate where the server can't tell."""
    counts = inference.count_tokens(texts, model=model)
    # Not tokens.estimate_tokens: what is charged must not be undercounted, so this one is
    # deliberately high (two bytes of UTF-8 a token, which covers code and non-Latin text
    # that take far more tokens per character than prose).
    return counts if counts is not None else [len(t.encode()) // 2 + 1 for t in texts]


def embed_metered(
    db: Database,
    settings: Settings,
    inference: InferenceClient,
    account_id: str,
    key_id: str | None,
    instance: Any,
    texts: list[str],
    clock: Clock,
) -> tuple[list[list[float]], int]:
    """``/v1/embeddings`` under the same hold and settle as chat (``meter.EMBEDDINGS``):
    402 when the credit or the instance's or key's spend cap does not cover the input.
    Returns the vectors and the input tokens charged."""
    counted = 0
    if settings.billing.enabled:
        limit = settings.inference.embedding_max_tokens  # longer texts are cut to this
        counted = sum(min(n, limit) for n in token_counts(inference, texts, "embedding"))
    hold = meter.reserve(
        db,
        settings,
        account_id=account_id,
        instance_id=instance.id,
        key_id=key_id,
        model=meter.EMBEDDINGS,
        prompt_tokens=counted,
        max_completion_tokens=0,
        now=clock(),
    )
    try:
        vectors, tokens = inference.embed_counted(texts, account_id=account_id)
    except BaseException:
        meter.release(db, hold, now=clock())
        raise
    used = tokens if tokens is not None else counted
    meter.settle(db, settings, hold, prompt_tokens=used, completion_tokens=0, now=clock())
    return vectors, used
