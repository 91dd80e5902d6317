"""Answering in chat: one turn's answer generated, relayed (SSE events or JSON) and
stored; the events are described in ``web/chat.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Request, Response
from litestar.response import Stream

from appliance.billing.metering import Metered
from appliance.chat import render
from appliance.chat import service as chat
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient
from appliance.knowledge import service as knowledge
from appliance.web.deps import Ctx
from appliance.web.errors import stream_error
from appliance.web.identity import Identity
from appliance.web.sse import event_stream, sse


def message_json(
    db, account_id: str, message: chat.Message, versions: list[str] | None = None
) -> dict[str, Any]:
    """A message for the API and the page, with its rendered HTML, and where it has other
    versions, ``{"index", "count", "previous", "next"}`` (ids to select)."""
    data = message.public()
    if versions:
        at = versions.index(message.id)
        data["versions"] = {
            "index": at + 1,
            "count": len(versions),
            "previous": versions[at - 1] if at > 0 else None,
            "next": versions[at + 1] if at + 1 < len(versions) else None,
        }
    if message.role == "assistant":
        texts = knowledge.passage_texts(
            db, account_id, [s["chunk_id"] for s in message.sources if s.get("chunk_id")]
        )
        data["html"] = render.render(
            message.content, message.sources, texts, prefix=f"{message.id}-src"
        )
        for source in data["sources"]:
            source["text"] = texts.get(source.get("chunk_id"))
    return data


def conversation_json(db, account_id: str, conversation: chat.Conversation) -> dict[str, Any]:
    data = conversation.public()
    data["messages"] = [
        message_json(db, account_id, m, conversation.versions.get(m.id))
        for m in conversation.messages
    ]
    return data


def status_text(passages: int, waiting: int) -> str:
    """What happens before the first token, in words."""
    if waiting:
        others = "1 other request is" if waiting == 1 else f"{waiting} other requests are"
        return f"The model is busy: {others} waiting."
    if passages:
        return f"Reading {passages} passage{'' if passages == 1 else 's'} from your documents…"
    return "Writing the answer…"


class _Answer:
    """Generates, relays and stores one answer; the same code streams or returns JSON."""

    def __init__(
        self,
        settings: Settings,
        client: InferenceClient,
        me: Identity,
        turn: chat.Turn,
        clock,
        service: InferenceClient | None = None,
    ) -> None:
        self.settings = settings
        self.client = client  # metered: settles the hold when the stream ends (web/billing.py)
        self.service = service  # unmetered, to ask how many requests are waiting
        self.me = me
        self.turn = turn
        self.clock = clock
        self.parts: list[str] = []
        self.usage: dict[str, int] = {}
        self.finish_reason = "cancelled"

    async def deltas(self) -> AsyncIterator[str]:
        payload = self.turn.composed.payload
        async for chunk in self.client.astream_chat(payload, account_id=self.me.account.id):
            if chunk.get("usage"):
                self.usage = chat.usage_counts(chunk["usage"])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self.parts.append(text)
                    yield text
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]

    def store(self) -> dict[str, Any] | None:
        """Keep what was written (also when stopped); free the conversation."""
        db = open_db(self.settings, migrate=False)
        try:
            text = "".join(self.parts)
            usage = self.usage or {
                # Stopped before the final usage chunk: the prompt as counted when it was
                # composed, one token per streamed piece (the service sends one per token).
                "prompt_tokens": self.turn.composed.prompt_tokens,
                "completion_tokens": len(self.parts),
                "cached_tokens": 0,
            }
            message = chat.finish_turn(
                db,
                self.turn,
                text,
                self.clock(),
                finish_reason=self.finish_reason,
                **usage,
            )
            return message_json(db, self.me.account.id, message) if message else None
        finally:
            db.close()

    def fail(self) -> None:
        db = open_db(self.settings, migrate=False)
        try:
            chat.end_turn(db, self.turn.conversation.id)
        finally:
            db.close()

    async def finish(self) -> dict[str, Any] | None:
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(self.store)

    async def waiting(self) -> int:
        """Requests the inference service has waiting (0 when it cannot tell quickly)."""
        if self.service is None:
            return 0
        try:
            with anyio.fail_after(0.5):
                health = await self.service.ahealth(timeout=0.5)
        except (ApplianceError, TimeoutError):
            return 0
        queue = health.get("queue")
        return queue if isinstance(queue, int) else 0

    async def events(self, user: dict[str, Any] | None) -> AsyncIterator[str]:
        if user is not None:
            yield sse({"type": "user", "message": user})
        passages = len(self.turn.composed.passages)
        yield sse({"type": "status", "text": status_text(passages, await self.waiting())})
        try:
            async for text in self.deltas():
                yield sse({"type": "delta", "text": text})
        except ApplianceError as exc:
            # The inference service broke the answer off (it crashed, or refused): what
            # it wrote is dropped with its charge (web/billing.py); the question stays.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.fail)
            yield sse({**stream_error(exc), "type": "error"})
            return
        except BaseException:
            # The client went away (Stop) or the server is stopping: keep what was written.
            await self.finish()
            raise
        message = await self.finish()
        yield sse({"type": "done", "message": message})

    async def complete(self) -> dict[str, Any]:
        try:
            async for _ in self.deltas():
                pass
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.fail)
            raise
        message = await self.finish()
        return {"message": message}


async def respond(
    stream: Any,
    ctx: Ctx,
    me: Identity,
    conversation_id: str,
    *,
    content: str | None = None,
    edit_message_id: str | None = None,
    request: Request | None = None,
) -> Response | Stream:
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false.")
    db, settings, client, clock = ctx.db, ctx.settings, ctx.inference, ctx.clock
    turn = await anyio.to_thread.run_sync(
        lambda: chat.prepare_turn(
            db,
            settings,
            client,
            me.account.id,
            me.user.id,
            conversation_id,
            clock(),
            content=content,
            edit_message_id=edit_message_id,
        )
    )
    if request is not None:
        request.state.instance_id = turn.instance.id  # for the request log (no content)
    try:
        metered = await Metered.start(
            db,
            settings,
            client,
            me.account.id,
            me.key_id,
            turn.instance,
            turn.composed.payload,
            clock,
            prompt_tokens=turn.composed.prompt_tokens,
        )
    except BaseException:
        # Out of credit (402) or a spend cap: the question stays, "Answer again" retries it.
        await anyio.to_thread.run_sync(lambda: chat.end_turn(db, turn.conversation.id))
        raise
    answer = _Answer(settings, metered.observe(client), me, turn, clock, service=client)
    user = message_json(db, me.account.id, turn.user_message) if content is not None else None
    if not stream:
        result = await answer.complete()
        return Response({"user": user, **result})
    return event_stream(answer.events(user))
