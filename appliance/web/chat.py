"""Chat over HTTP: conversations API, streamed answers (SSE), and the Chat page.

Sending a message (or regenerating, or editing an earlier one) answers with
``text/event-stream``: one ``data:`` JSON event per step — ``{"type": "user"}`` with the
stored question, ``{"type": "status", "text"}`` while the answer has not started (what
the server is doing: reading the passages it found, waiting behind other requests),
``{"type": "delta", "text"}`` per piece of the answer, then ``{"type": "done",
"message"}`` with the stored answer (checked citations, usage, and its sanitized HTML) or
``{"type": "error", "status", "retry_after", "message", "code"}``
(``web.errors.stream_error``: 429/503 and the seconds to wait when the model is busy).
A client that disconnects (the page's Stop button) stops the generation; what was
written so far is kept. An answer the inference service breaks off (it crashed and is
being restarted) ends with the error event and is neither kept nor charged; the question
stays for "Answer again". With ``"stream": false`` the same routes answer with the stored
message as JSON. Generating, relaying and storing an answer is ``web/chat_answer.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect, Stream, Template

from appliance.chat import service as chat
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import InvalidInput
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.web import flash
from appliance.web.chat_answer import conversation_json, respond
from appliance.web.identity import Identity


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


@dataclass(frozen=True)
class Asker:
    """What a chat request needs (the database, settings, inference, the caller and the
    clock) as one dependency; calling it answers a turn (``respond``)."""

    db: sqlite_utils.Database
    settings: Settings
    inference: InferenceClient
    me: Identity
    clock: Clock

    async def __call__(self, stream: Any, conversation_id: str, **turn: Any) -> Response | Stream:
        return await respond(
            stream,
            self.db,
            self.settings,
            self.inference,
            self.me,
            self.clock,
            conversation_id,
            **turn,
        )


def provide_asker(
    db: NamedDependency[sqlite_utils.Database],
    settings: NamedDependency[Settings],
    inference: NamedDependency[InferenceClient],
    me: NamedDependency[Identity],
    clock: NamedDependency[Clock],
) -> Asker:
    return Asker(db, settings, inference, me, clock)


ASKER = {"ask": Provide(provide_asker, sync_to_thread=False)}


class ChatApi(Controller):
    path = "/api/conversations"
    tags = ["chat"]
    dependencies = ASKER

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
        ask: NamedDependency[Asker],
    ) -> dict:
        """Start a conversation: ``{"instance_id", "title"?, "content"?}``. With
        ``content`` (the first message, sent next to ``/messages``) nothing is created when
        that message is empty or cannot fit the instance's context budget (400)."""
        instance_id = data.get("instance_id")
        if not isinstance(instance_id, str):
            raise InvalidInput("'instance_id' must be the id of one of your instances.")
        ids, title = (ask.me.account.id, ask.me.user.id, instance_id), data.get("title")
        if "content" in data:
            content = data["content"]
            created = chat.start(
                ask.db, ask.settings, ask.inference, *ids, content, ask.clock(), title=title
            )
        else:
            created = chat.create(ask.db, *ids, ask.clock(), title=title)
        return created.public(with_messages=True)

    @post("/measure", status_code=200, sync_to_thread=True)
    def measure(
        self,
        data: JSONBody[dict[str, Any]],
        ask: NamedDependency[Asker],
    ) -> dict:
        """How ``{"instance_id", "content"}`` measures against the instance's context
        budget: ``{"tokens", "limit", "fits", "context_budget", "answer_reserve",
        "system_tokens"}`` (the page's counter; nothing is stored)."""
        instance_id, content = data.get("instance_id"), data.get("content")
        if not isinstance(instance_id, str) or not isinstance(content, str):
            raise InvalidInput("Send 'instance_id' and 'content' as strings.")
        if len(content) > chat.MAX_MESSAGE_CHARS:
            raise InvalidInput(f"A message may be at most {chat.MAX_MESSAGE_CHARS:,} characters.")
        room = chat.measure(
            ask.db,
            ask.settings,
            ask.inference,
            ask.me.account.id,
            instance_id,
            content,
            ask.clock(),
        )
        return {
            "tokens": room.tokens,
            "limit": room.limit,
            "fits": room.fits,
            "context_budget": room.context_budget,
            "answer_reserve": room.answer_reserve,
            "system_tokens": room.system_tokens,
        }

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
        ask: NamedDependency[Asker],
    ) -> Response | Stream:
        """Ask: ``{"content", "stream"?: true}``; the answer streams as SSE."""
        body = await _body(request)
        content = chat.clean_content(body.get("content"))
        return await ask(
            body.get("stream", True), conversation_id, content=content, request=request
        )

    @post("/{conversation_id:str}/regenerate", status_code=200)
    async def regenerate(
        self,
        request: Request,
        conversation_id: FromPath[str],
        ask: NamedDependency[Asker],
    ) -> Response | Stream:
        """Answer the last question again (the previous answer is kept as a version)."""
        body = await _body(request)
        return await ask(body.get("stream", True), conversation_id, request=request)

    @post("/{conversation_id:str}/messages/{message_id:str}/edit", status_code=200)
    async def edit(
        self,
        request: Request,
        conversation_id: FromPath[str],
        message_id: FromPath[str],
        ask: NamedDependency[Asker],
    ) -> Response | Stream:
        """Ask ``{"content"}`` as a new version of an earlier question; the old one and what
        followed it are kept as the other version, and the conversation continues from
        the new one."""
        body = await _body(request)
        content = chat.clean_content(body.get("content"))
        return await ask(
            body.get("stream", True),
            conversation_id,
            content=content,
            edit_message_id=message_id,
            request=request,
        )

    @post(
        "/{conversation_id:str}/messages/{message_id:str}/select",
        status_code=200,
        sync_to_thread=True,
    )
    def select(
        self,
        conversation_id: FromPath[str],
        message_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Show this version of a message (and what followed it) instead of its others;
        answers with the conversation."""
        found = chat.select_version(
            db, me.account.id, me.user.id, conversation_id, message_id, clock()
        )
        return conversation_json(db, me.account.id, found)


class ChatPages(Controller):
    include_in_schema = False
    dependencies = ASKER

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
        ask: NamedDependency[Asker],
    ) -> Response:
        """Without JavaScript: start a conversation and answer its first message (one that
        is refused leaves no conversation behind)."""
        db, me, now = ask.db, ask.me, ask.clock()
        ids = (me.account.id, me.user.id, data.get("instance_id", ""))
        content = data.get("content", "")
        created = await anyio.to_thread.run_sync(
            lambda: (
                chat.start(db, ask.settings, ask.inference, *ids, content, now)
                if content.strip()
                else chat.create(db, *ids, now)
            )
        )
        if content.strip():
            await ask(False, created.id, content=content)
        return Redirect(f"/chat/{created.id}")

    @post("/chat/{conversation_id:str}/send")
    async def send_form(
        self,
        conversation_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        ask: NamedDependency[Asker],
    ) -> Response:
        """Without JavaScript: answer in full, then show the conversation."""
        await ask(False, conversation_id, content=chat.clean_content(data.get("content")))
        return Redirect(f"/chat/{conversation_id}")

    @post("/chat/{conversation_id:str}/rename", sync_to_thread=True)
    def rename_form(
        self,
        request: Request,
        conversation_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        chat.rename(db, me.account.id, me.user.id, conversation_id, data.get("title"), clock())
        return flash.redirect(request, f"/chat/{conversation_id}", "Conversation renamed.")

    @post("/chat/{conversation_id:str}/delete", sync_to_thread=True)
    def delete_form(
        self,
        request: Request,
        conversation_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        chat.delete(db, me.account.id, me.user.id, conversation_id, clock())
        return flash.redirect(request, "/chat", "Conversation deleted.")


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
