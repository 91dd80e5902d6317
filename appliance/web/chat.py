"""Chat over HTTP: conversations API, streamed answers (SSE), and the Chat page.

Sending a message (or regenerating, or editing an earlier one) answers with
``text/event-stream``: one ``data:`` JSON event per step — ``{"type": "user"}`` with the
stored question, ``{"type": "delta", "text"}`` per piece of the answer, then
``{"type": "done", "message"}`` with the stored answer (checked citations, usage, and
its sanitized HTML) or ``{"type": "error", "status", "retry_after", "message", "code"}``
(``web.errors.stream_error``: 429/503 and the seconds to wait when the model is busy).
A client that disconnects (the page's Stop button) stops the generation; what was written
so far is kept. An answer the inference service refuses or breaks off (it crashed and is
being restarted) ends with the error event and is neither kept nor charged; the question
stays for "Answer again". With ``"stream": false`` the same routes answer with the stored
message as JSON, or with the refusal's status and ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect, Stream, Template

from appliance.billing.metering import Metered
from appliance.chat import render
from appliance.chat import service as chat
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.knowledge import service as knowledge
from appliance.web.errors import stream_error
from appliance.web.identity import Identity

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def message_json(db, account_id: str, message: chat.Message) -> dict[str, Any]:
    """A message for the API and the page, with its rendered HTML."""
    data = message.public()
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
    data["messages"] = [message_json(db, account_id, m) for m in conversation.messages]
    return data


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidInput("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return body


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Answer:
    """Generates, relays and stores one answer; the same code streams or returns JSON."""

    def __init__(
        self, settings: Settings, client: InferenceClient, me: Identity, turn: chat.Turn, clock
    ) -> None:
        self.settings = settings
        self.client = client  # metered: settles the hold when the stream ends (billing/metering.py)
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

    async def events(self, user: dict[str, Any] | None) -> AsyncIterator[str]:
        if user is not None:
            yield _event({"type": "user", "message": user})
        try:
            async for text in self.deltas():
                yield _event({"type": "delta", "text": text})
        except ApplianceError as exc:
            # The inference service broke the answer off (it crashed, or refused): what
            # it wrote is dropped with its charge (billing/metering.py); the question stays.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.fail)
            yield _event({**stream_error(exc), "type": "error"})
            return
        except BaseException:
            # The client went away (Stop) or the server is stopping: keep what was written.
            await self.finish()
            raise
        message = await self.finish()
        yield _event({"type": "done", "message": message})

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


async def _respond(
    stream: Any,
    db,
    settings: Settings,
    client: InferenceClient,
    me: Identity,
    clock: Clock,
    conversation_id: str,
    *,
    content: str | None = None,
    edit_message_id: str | None = None,
    request: Request | None = None,
) -> Response | Stream:
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false.")
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
            me.key.id if me.key else None,
            turn.instance,
            turn.composed.payload,
            clock,
            prompt_tokens=turn.composed.prompt_tokens,
        )
    except BaseException:
        # Out of credit (402) or a spend cap: the question stays, "Answer again" retries it.
        await anyio.to_thread.run_sync(lambda: chat.end_turn(db, turn.conversation.id))
        raise
    answer = _Answer(settings, metered.observe(client), me, turn, clock)
    user = message_json(db, me.account.id, turn.user_message) if content is not None else None
    if not stream:
        result = await answer.complete()
        return Response({"user": user, **result})
    return Stream(answer.events(user), media_type="text/event-stream", headers=SSE_HEADERS)


class ChatApi(Controller):
    path = "/api/conversations"
    tags = ["chat"]

    @get("/", sync_to_thread=True)
    def list_all(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        q: FromQuery[str | None] = None,
    ) -> list[dict]:
        """The user's conversations, newest first; ``q``: full-text search over them."""
        if q is not None and len(q) > 500:
            raise InvalidInput("The search text may be at most 500 characters.")
        return chat.list_for_user(db, me.account.id, me.user.id, query=q)

    @post("/", status_code=201, sync_to_thread=True)
    def create(
        self,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Start a conversation: ``{"instance_id", "title"?}``."""
        instance_id = data.get("instance_id")
        if not isinstance(instance_id, str):
            raise InvalidInput("'instance_id' must be the id of one of your instances.")
        created = chat.create(
            db, me.account.id, me.user.id, instance_id, clock(), title=data.get("title")
        )
        return created.public(with_messages=True)

    @get("/{conversation_id:str}", sync_to_thread=True)
    def read(
        self,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """One conversation with its messages (answers with rendered HTML and sources)."""
        found = chat.get(db, me.account.id, me.user.id, conversation_id)
        return conversation_json(db, me.account.id, found)

    @patch("/{conversation_id:str}", sync_to_thread=True)
    def change(
        self,
        conversation_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Rename: ``{"title"}``."""
        unknown = sorted(set(data) - {"title"})
        if unknown:
            raise InvalidInput(f"Only 'title' can be changed, not '{unknown[0]}'.")
        renamed = chat.rename(
            db, me.account.id, me.user.id, conversation_id, data.get("title"), clock()
        )
        return renamed.public()

    @delete("/{conversation_id:str}", status_code=204, sync_to_thread=True)
    def remove(
        self,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> None:
        """Delete the conversation and every message in it, at once (a deletion receipt
        records it)."""
        chat.delete(db, me.account.id, me.user.id, conversation_id, clock())

    @post("/{conversation_id:str}/messages", status_code=200)
    async def send(
        self,
        request: Request,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response | Stream:
        """Ask: ``{"content", "stream"?: true}``; the answer streams as SSE."""
        body = await _body(request)
        return await _respond(
            body.get("stream", True),
            db,
            settings,
            inference,
            me,
            clock,
            conversation_id,
            content=chat.clean_content(body.get("content")),
            request=request,
        )

    @post("/{conversation_id:str}/regenerate", status_code=200)
    async def regenerate(
        self,
        request: Request,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response | Stream:
        """Answer the last question again (the previous answer is replaced)."""
        body = await _body(request)
        return await _respond(
            body.get("stream", True),
            db,
            settings,
            inference,
            me,
            clock,
            conversation_id,
            request=request,
        )

    @post("/{conversation_id:str}/messages/{message_id:str}/edit", status_code=200)
    async def edit(
        self,
        request: Request,
        conversation_id: FromPath[str],
        message_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response | Stream:
        """Replace an earlier question with ``{"content"}``; what followed it is dropped
        and the conversation continues from there."""
        body = await _body(request)
        return await _respond(
            body.get("stream", True),
            db,
            settings,
            inference,
            me,
            clock,
            conversation_id,
            content=chat.clean_content(body.get("content")),
            edit_message_id=message_id,
            request=request,
        )


class ChatPages(Controller):
    include_in_schema = False

    @get("/chat", sync_to_thread=True)
    def index(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        q: FromQuery[str | None] = None,
    ) -> Template:
        return Template("chat.html", context=_context(db, me, None, q))

    @get("/chat/{conversation_id:str}", sync_to_thread=True)
    def show(
        self,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> Template:
        found = chat.get(db, me.account.id, me.user.id, conversation_id)
        return Template("chat.html", context=_context(db, me, found, None))

    @post("/chat")
    async def start(
        self,
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Without JavaScript: start a conversation and answer its first message."""
        created = await anyio.to_thread.run_sync(
            lambda: chat.create(db, me.account.id, me.user.id, data.get("instance_id", ""), clock())
        )
        if data.get("content", "").strip():
            await _respond(
                False, db, settings, inference, me, clock, created.id, content=data["content"]
            )
        return Redirect(f"/chat/{created.id}")

    @post("/chat/{conversation_id:str}/send")
    async def send_form(
        self,
        conversation_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Without JavaScript: answer in full, then show the conversation."""
        content = chat.clean_content(data.get("content"))
        await _respond(False, db, settings, inference, me, clock, conversation_id, content=content)
        return Redirect(f"/chat/{conversation_id}")

    @post("/chat/{conversation_id:str}/rename", sync_to_thread=True)
    def rename_form(
        self,
        conversation_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        chat.rename(db, me.account.id, me.user.id, conversation_id, data.get("title"), clock())
        return Redirect(f"/chat/{conversation_id}")

    @post("/chat/{conversation_id:str}/delete", sync_to_thread=True)
    def delete_form(
        self,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        chat.delete(db, me.account.id, me.user.id, conversation_id, clock())
        return Redirect("/chat")


def _context(db, me: Identity, conversation: chat.Conversation | None, q: str | None) -> dict:
    usable = [i for i in instances.list_instances(db, me.account.id) if i.state == "running"]
    names = {i.id: i for i in instances.list_instances(db, me.account.id)}
    return {
        "me": me,
        "q": q or "",
        "conversations": chat.list_for_user(db, me.account.id, me.user.id, query=q),
        "conversation": conversation,
        "instance": names.get(conversation.instance_id) if conversation else None,
        "messages": conversation_json(db, me.account.id, conversation)["messages"]
        if conversation
        else [],
        "instances": usable,
    }
