"""One turn's answer, from the question to the stored message, as an async generator of
events; the web layer maps them to server-sent events or a JSON body (``web/chat.py``).

``answer`` prepares the turn (the question stored, the prompt composed: ``service``) and
reserves what it may cost (``billing.metering``) before its first event, ``Started``: a
refusal (bad input, out of credit, no such conversation, one already answering) raises
there, before anything is sent. Then ``Status`` says
what happens before the first token, a ``Delta`` carries each piece of the answer, and
``Done`` the stored answer (checked citations, exact usage). An answer the inference
service breaks off (it crashed, or refused) ends with ``Failed``: what it wrote is
dropped with its charge and the question stays for "Answer again". A consumer that stops
early (the page's Stop, a server stopping) keeps what was written, charged as produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import sqlite_utils

from appliance.billing.metering import Metered
from appliance.chat import service
from appliance.chat.citations import usage_counts
from appliance.chat.views import message_view
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import pooled
from appliance.errors import ApplianceError, Unavailable
from appliance.inference.client import InferenceClient

T = TypeVar("T")


@dataclass(frozen=True)
class Started:
    """The turn is prepared and its hold reserved; ``user``: the stored question
    (``message_view``), None when the last question is answered again. (The instance goes
    to ``on_turn`` before the hold, so a refused turn is logged under it too.)"""

    user: dict[str, Any] | None


@dataclass(frozen=True)
class Status:
    text: str  # what happens before the first token, in words


@dataclass(frozen=True)
class Delta:
    text: str  # a piece of the answer


@dataclass(frozen=True)
class Done:
    message: dict[str, Any] | None  # the stored answer; None when nothing was written


@dataclass(frozen=True)
class Failed:
    error: ApplianceError  # why the inference service broke the answer off


Event = Started | Status | Delta | Done | Failed


def status_text(passages: int, waiting: int) -> str:
    """What happens before the first token, in words."""
    if waiting:
        others = "1 other request is" if waiting == 1 else f"{waiting} other requests are"
        return f"The model is busy: {others} waiting."
    if passages:
        return f"Reading {passages} passage{'' if passages == 1 else 's'} from your documents…"
    return "Writing the answer…"


async def answer(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    clock: Clock,
    *,
    account_id: str,
    user_id: str,
    key_id: str | None,
    conversation_id: str,
    content: str | None = None,
    edit_message_id: str | None = None,
    status: bool = True,
    on_turn: Callable[[str], None] | None = None,
) -> AsyncIterator[Event]:
    """Ask ``content`` in the conversation (as a new version of the question
    ``edit_message_id`` when given; with neither, answer the last question again, as
    ``service.prepare_turn`` says) and answer it. ``status``: whether to say what happens
    before the first token (it asks the inference service how many requests wait, and a
    service that does not answer is a 503 before the stream, as it is without a stream).
    ``on_turn``: told the instance's id once the turn is prepared, before the billing hold
    (the request log names the instance of a refused turn too).

    ``db`` is used until ``Started``; the answer is stored on a connection of its own.
    """

    def prepare() -> tuple[service.Turn, Metered, dict[str, Any] | None]:
        turn = service.prepare_turn(
            db,
            settings,
            client,
            account_id,
            user_id,
            conversation_id,
            clock(),
            content=content,
            edit_message_id=edit_message_id,
        )
        if on_turn is not None:
            on_turn(turn.instance.id)
        composed = turn.composed
        try:
            metered = Metered.reserve(
                db,
                settings,
                account_id,
                key_id,
                turn.instance,
                composed.payload,
                clock,
                prompt_tokens=composed.prompt_tokens,
                recount=composed.recount,
            )
        except BaseException:
            # Out of credit (402) or a spend cap: the question stays, "Answer again" retries.
            service.end_turn(db, turn.conversation.id)
            raise
        user = message_view(db, account_id, turn.user_message) if content is not None else None
        return turn, metered, user

    turn, metered, user = await anyio.to_thread.run_sync(prepare)  # one hop before the model

    parts: list[str] = []
    usage: dict[str, int] = {}
    finish_reason = "cancelled"

    def store() -> dict[str, Any] | None:
        """Keep what was written (also when stopped); free the conversation."""
        counts = usage or {
            # Stopped before the final usage chunk: the prompt as metering counts it, one
            # token per streamed piece (the service sends one per token).
            "prompt_tokens": metered.counted_prompt(),
            "completion_tokens": len(parts),
            "cached_tokens": 0,
        }
        with pooled(settings) as own:
            text = "".join(parts)
            message = service.finish_turn(
                own, turn, text, clock(), finish_reason=finish_reason, **counts
            )
            return message_view(own, account_id, message) if message else None

    def fail() -> None:
        with pooled(settings) as own:
            service.end_turn(own, turn.conversation.id)

    try:
        waiting = await _waiting(client) if status else 0
    except Unavailable:
        # Not answering at all: refused (503) before the stream begins, nothing held; the
        # question stays, "Answer again" retries it.
        await metered.finish(None)
        await _shielded(fail)
        raise
    failed: ApplianceError | None = None
    try:
        yield Started(user)
        if status:
            yield Status(status_text(len(turn.composed.passages), waiting))
        relay = metered.observe(client).astream_chat(turn.composed.payload, account_id=account_id)
        async for chunk in relay:
            if chunk.get("usage"):
                usage = usage_counts(chunk["usage"])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    yield Delta(text)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
    except ApplianceError as exc:
        failed = exc  # the observed relay has released the hold (billing.metering)
    except BaseException:
        # The consumer went away (Stop) or the server is stopping: keep what was written.
        await _shielded(store)
        # Settled once, by this or by the relay, whichever comes first.
        await metered.finish(metered.usage, metered.produced)
        raise
    if failed is not None:
        await _shielded(fail)
        yield Failed(failed)
        return
    yield Done(await _shielded(store))


async def _shielded(work: Callable[[], T]) -> T:
    """``work`` on a thread, finished even when the caller is cancelled."""
    with anyio.CancelScope(shield=True):
        return await anyio.to_thread.run_sync(work)


async def _waiting(client: InferenceClient) -> int:
    """Requests the inference service has waiting (0 when it cannot tell quickly).

    Raises:
        Unavailable: the service is not answering at all.
    """
    try:
        with anyio.fail_after(0.5):  # before the client's own timeout: busy, not down
            health = await client.ahealth(timeout=1.0)
    except TimeoutError:
        return 0
    except Unavailable:
        raise
    except ApplianceError:
        return 0
    queue = health.get("queue")
    return queue if isinstance(queue, int) else 0
