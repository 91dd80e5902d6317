"""Prompt composition, shared by chat turns and ``/v1``: the instance's system prompt (or
the account's persona prompt and voice excerpts), retrieved passages, and as much history
as fits the instance's context budget (``prompt.assemble``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import sqlite_utils

from appliance.chat import prompt
from appliance.config import Settings
from appliance.errors import InvalidInput
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.knowledge import search as kb_search
from appliance.persona import service as persona
from appliance.tokens import estimate_tokens


@dataclass(frozen=True)
class Composed:
    """What goes to the inference service, and what it was built from."""

    payload: dict[str, Any]
    passages: list[prompt.Passage]
    #: The prompt's tokens; with ``recount``, an upper bound of them.
    prompt_tokens: int
    dropped_messages: int
    #: None: ``prompt_tokens`` was counted. Otherwise the prompt fit on byte bounds alone
    #: and this counts it (one call to the inference service, on a thread).
    recount: Callable[[], int] | None = None


def system_prompt(db, settings: Settings, account_id: str, instance, now: datetime) -> str:
    if instance.system_prompt:
        return instance.system_prompt
    if instance.voice:
        return persona.prompt_for_account(db, settings, account_id, now)
    return persona.effective_prompt(db, account_id, now)


def retrieve(
    db,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    query: str,
    k: int,
    collections: list[str] | None = None,
) -> list[prompt.Passage]:
    """The account's best passages for ``query`` (from ``collections`` only, when given),
    numbered from 1."""
    tuning = kb_search.Tuning.from_settings(settings.knowledge)
    try:
        result = kb_search.search(
            db, client, account_id, query[: kb_search.MAX_QUERY_CHARS], k, tuning, collections
        )
    except InvalidInput:
        return []
    fields = ("document_id", "filename", "text", "page", "heading", "chunk_id")
    return [
        prompt.Passage(i, **{name: getattr(hit, name) for name in fields})
        for i, hit in enumerate(result.hits, start=1)
    ]


def count_tokens(client: InferenceClient, texts: list[str]) -> list[int]:
    """Counts in the chat model's tokenizer (an estimate where the server cannot tell)."""
    counts = client.count_tokens(texts, model="chat")
    return counts if counts is not None else [estimate_tokens(t) for t in texts]


def byte_bounds(texts: list[str]) -> list[int]:
    """The most tokens each text can take in any llama.cpp vocabulary, without asking it:
    a token covers at least one byte of UTF-8 (byte-level BPE, or SentencePiece's byte
    fallback), and SentencePiece may add one for the space it puts in front."""
    return [len(text.encode()) + 1 for text in texts]


@dataclass(frozen=True)
class Room:
    """How a message measures against an instance's context budget."""

    tokens: int  # the message, with its share of the chat template
    limit: int  # the most a message may take: the budget less the answer and system prompt
    context_budget: int  # as the Instances page shows it
    answer_reserve: int
    system_tokens: int

    @property
    def fits(self) -> bool:
        return self.tokens <= self.limit

    def refusal(self) -> str:
        return (
            f"This message is too long for the instance: it is {self.tokens:,} tokens, and "
            f"there is room for {self.limit:,} (the context budget of "
            f"{self.context_budget:,} tokens, less {self.answer_reserve:,} kept for the answer "
            f"and {self.system_tokens:,} for the instructions). Shorten it or split it; it "
            "was not sent."
        )


def room(
    db,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    instance,
    text: str,
    now,
    count: prompt.Counter | None = None,
) -> Room:
    """Measure ``text`` as the newest message, as ``prompt.assemble`` will (in the chat
    model's tokens, or with ``count``)."""
    system = system_prompt(db, settings, account_id, instance, now)
    count = count or partial(count_tokens, client)
    system_count, text_count = count([system, text])
    system_tokens = system_count + prompt.MESSAGE_OVERHEAD if system else 0
    reserve = min(instance.max_tokens, instance.context_budget // 2)  # kept for the answer
    return Room(
        tokens=text_count + prompt.MESSAGE_OVERHEAD,
        limit=instance.context_budget - reserve - system_tokens,
        context_budget=instance.context_budget,
        answer_reserve=reserve,
        system_tokens=system_tokens,
    )


def compose(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    account_id: str,
    instance: instances.Instance,
    conversation: list[dict[str, str]],
    now: datetime,
    *,
    own_system: str | None = None,
    knowledge: bool = True,
    max_tokens: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Composed:
    """Assemble the request for ``conversation`` (oldest first) on ``instance``."""
    system = own_system
    if system is None:
        system = system_prompt(db, settings, account_id, instance, now)
    passages: list[prompt.Passage] = []
    last_user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    if instance.knowledge and knowledge and last_user:
        passages = retrieve(
            db, settings, client, account_id, last_user, instance.top_k, instance.collections
        )
    max_tokens = instance.max_tokens if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidInput("'max_tokens' must be a positive integer.")
    budget = instance.context_budget - min(max_tokens, instance.context_budget // 2)
    fit = partial(prompt.assemble, system, passages, conversation, budget=budget)
    counted = partial(fit, count=partial(count_tokens, client))
    assembled = _fit_on_bounds(fit)
    recount = None
    if assembled is None:
        assembled = counted()
    else:
        # Everything fits even if every byte were a token, so counting would keep the
        # same messages: the count waits until something needs it (metering, on a thread).
        recount = lambda: counted().tokens  # noqa: E731
    payload = {
        "messages": assembled.messages,
        "temperature": instance.temperature,
        "top_p": instance.top_p,
        **(overrides or {}),
        "max_tokens": max_tokens,
    }
    return Composed(
        payload, assembled.passages, assembled.tokens, assembled.dropped_messages, recount
    )


def _fit_on_bounds(fit: Callable[..., prompt.Assembled]) -> prompt.Assembled | None:
    """``fit`` on ``byte_bounds``, when that keeps every message and passage (None
    otherwise: only the model's own count can tell what to leave out)."""
    try:
        assembled = fit(count=byte_bounds)
    except InvalidInput:
        return None
    return None if assembled.dropped_messages or assembled.dropped_passages else assembled
