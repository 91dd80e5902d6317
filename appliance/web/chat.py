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
message as JSON. Generating, relaying and storing an answer is ``chat/answer.py``; this
module maps its events. The Chat page asks through its own ``/chat/{id}/ask``: the same
events, where ``user`` and ``done`` also carry the message's ``article`` drawn by the
page's macro (``templates/chat/messages.html``), as its reload ``/chat/{id}/messages`` does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

import anyio
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Stream, Template

from appliance.chat import answer
from appliance.chat import service as chat
from appliance.chat.views import conversation_view
from appliance.errors import InvalidInput
from appliance.instances import service as instances
from appliance.web.deps import Ctx, Deps, Form, Json, Member
from appliance.web.errors import stream_error
from appliance.web.identity import Identity
from appliance.web.sse import event_stream, sse


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


class ChatApi(Controller):
    path = "/api/conversations"
    tags = ["chat"]

    @get("/", sync_to_thread=True)
    def list_all(self, me: Member, ctx: Deps, q: FromQuery[str | None] = None) -> list[dict]:
        """The user's conversations, newest first; ``q``: full-text search over them."""
        if q is not None and len(q) > 500:
            raise InvalidInput("The search text may be at most 500 characters.")
        return chat.list_for_user(ctx.db, me.account.id, me.user.id, query=q)

    @post("/", status_code=201, sync_to_thread=True)
    def create(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Start a conversation: ``{"instance_id", "title"?, "content"?}``. With
        ``content`` (the first message, sent next to ``/messages``) nothing is created when
        that message is empty or cannot fit the instance's context budget (400)."""
        instance_id = data.get("instance_id")
        if not isinstance(instance_id, str):
            raise InvalidInput("'instance_id' must be the id of one of your instances.")
        ids, title = (me.account.id, me.user.id, instance_id), data.get("title")
        if "content" in data:
            content = data["content"]
            created = chat.start(
                ctx.db, ctx.settings, ctx.inference, *ids, content, ctx.now(), title=title
            )
        else:
            created = chat.create(ctx.db, *ids, ctx.now(), title=title)
        return created.public(with_messages=True)

    @post("/measure", status_code=200, sync_to_thread=True)
    def measure(self, data: Json, me: Member, ctx: Deps) -> dict:
        """How ``{"instance_id", "content"}`` measures against the instance's context
        budget: ``{"tokens", "limit", "fits", "context_budget", "answer_reserve",
        "system_tokens"}`` (the page's counter; nothing is stored)."""
        instance_id, content = data.get("instance_id"), data.get("content")
        if not isinstance(instance_id, str) or not isinstance(content, str):
            raise InvalidInput("Send 'instance_id' and 'content' as strings.")
        if len(content) > chat.MAX_MESSAGE_CHARS:
            raise InvalidInput(f"A message may be at most {chat.MAX_MESSAGE_CHARS:,} characters.")
        room = chat.measure(
            ctx.db, ctx.settings, ctx.inference, me.account.id, instance_id, content, ctx.now()
        )
        return {**asdict(room), "fits": room.fits}

    @get("/{conversation_id:str}", sync_to_thread=True)
    def read(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        """One conversation with its messages (answers with rendered HTML and sources)."""
        found = chat.get(ctx.db, me.account.id, me.user.id, conversation_id)
        return conversation_view(ctx.db, me.account.id, found)

    @patch("/{conversation_id:str}", sync_to_thread=True)
    def change(self, conversation_id: FromPath[str], data: Json, me: Member, ctx: Deps) -> dict:
        """Rename: ``{"title"}``."""
        unknown = sorted(set(data) - {"title"})
        if unknown:
            raise InvalidInput(f"Only 'title' can be changed, not '{unknown[0]}'.")
        return _rename(ctx, me, conversation_id, data.get("title")).public()

    @delete("/{conversation_id:str}", status_code=204, sync_to_thread=True)
    def remove(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> None:
        """Delete the conversation and every message in it, at once (a deletion receipt
        records it)."""
        chat.delete(ctx.db, me.account.id, me.user.id, conversation_id, ctx.now())

    @post("/{conversation_id:str}/messages", status_code=200)
    async def send(
        self, conversation_id: FromPath[str], me: Member, ctx: Deps
    ) -> Response | Stream:
        """Ask: ``{"content", "stream"?: true}``; the answer streams as SSE."""
        body = await _body(ctx.request)
        content = chat.clean_content(body.get("content"))
        stream = body.get("stream", True)
        return await respond(stream, ctx, me, conversation_id, content=content, request=ctx.request)

    @post("/{conversation_id:str}/regenerate", status_code=200)
    async def regenerate(
        self, conversation_id: FromPath[str], me: Member, ctx: Deps
    ) -> Response | Stream:
        """Answer the last question again (the previous answer is kept as a version)."""
        body = await _body(ctx.request)
        stream = body.get("stream", True)
        return await respond(stream, ctx, me, conversation_id, request=ctx.request)

    @post("/{conversation_id:str}/messages/{message_id:str}/edit", status_code=200)
    async def edit(
        self, conversation_id: FromPath[str], message_id: FromPath[str], me: Member, ctx: Deps
    ) -> Response | Stream:
        """Ask ``{"content"}`` as a new version of an earlier question; the old one and what
        followed it are kept as the other version, and the conversation continues from
        the new one."""
        body = await _body(ctx.request)
        content = chat.clean_content(body.get("content"))
        return await respond(
            body.get("stream", True),
            ctx,
            me,
            conversation_id,
            content=content,
            edit_message_id=message_id,
            request=ctx.request,
        )

    @post(
        "/{conversation_id:str}/messages/{message_id:str}/select",
        status_code=200,
        sync_to_thread=True,
    )
    def select(
        self, conversation_id: FromPath[str], message_id: FromPath[str], me: Member, ctx: Deps
    ) -> dict:
        """Show this version of a message (and what followed it) instead of its others;
        answers with the conversation."""
        ids = (me.account.id, me.user.id, conversation_id, message_id)
        found = chat.select_version(ctx.db, *ids, ctx.now())
        return conversation_view(ctx.db, me.account.id, found)


class ChatPages(Controller):
    include_in_schema = False

    @get("/chat", sync_to_thread=True)
    def index(self, me: Member, ctx: Deps, q: FromQuery[str | None] = None) -> Template:
        return Template("chat.html", context=_context(ctx.db, me, None, q))

    @get("/chat/{conversation_id:str}", sync_to_thread=True)
    def show(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> Template:
        found = chat.get(ctx.db, me.account.id, me.user.id, conversation_id)
        return Template("chat.html", context=_context(ctx.db, me, found, None))

    @get("/chat/{conversation_id:str}/messages", sync_to_thread=True)
    def messages(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        """The page's reload of a conversation: ``{"id", "title", "html"}``, its messages
        drawn as the page draws them."""
        found = chat.get(ctx.db, me.account.id, me.user.id, conversation_id)
        view = conversation_view(ctx.db, me.account.id, found)
        html = "".join(_drawer(ctx.request)(m) for m in view["messages"])
        return {"id": found.id, "title": found.title, "html": html}

    @post("/chat/{conversation_id:str}/ask", status_code=200)
    async def ask(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> Stream:
        """The page's streamed answer: ``{"content"}`` asks, with ``"edit"`` (a message
        id) as a new version of that question; ``{}`` answers the last question again.
        The API's events, with each stored message drawn (``respond``)."""
        body = await _body(ctx.request)
        content = chat.clean_content(body["content"]) if "content" in body else None
        return await respond(
            True,
            ctx,
            me,
            conversation_id,
            content=content,
            edit_message_id=body.get("edit"),
            request=ctx.request,
            draw=_drawer(ctx.request),
        )

    @post("/chat")
    async def start(self, data: Form, me: Member, ctx: Deps) -> Response:
        """Without JavaScript: start a conversation and answer its first message (one that
        is refused leaves no conversation behind)."""
        db, now = ctx.db, ctx.now()
        ids = (me.account.id, me.user.id, data.get("instance_id", ""))
        content = data.get("content", "")
        created = await anyio.to_thread.run_sync(
            lambda: (
                chat.start(db, ctx.settings, ctx.inference, *ids, content, now)
                if content.strip()
                else chat.create(db, *ids, now)
            )
        )
        if content.strip():
            await respond(False, ctx, me, created.id, content=content)
        return Redirect(f"/chat/{created.id}")

    @post("/chat/{conversation_id:str}/send")
    async def send_form(
        self, conversation_id: FromPath[str], data: Form, me: Member, ctx: Deps
    ) -> Response:
        """Without JavaScript: answer in full, then show the conversation."""
        content = chat.clean_content(data.get("content"))
        await respond(False, ctx, me, conversation_id, content=content)
        return Redirect(f"/chat/{conversation_id}")

    @post("/chat/{conversation_id:str}/rename", sync_to_thread=True)
    def rename_form(
        self, conversation_id: FromPath[str], data: Form, me: Member, ctx: Deps
    ) -> Response:
        _rename(ctx, me, conversation_id, data.get("title"))
        return ctx.redirect(f"/chat/{conversation_id}", "Conversation renamed.")

    @post("/chat/{conversation_id:str}/delete", sync_to_thread=True)
    def delete_form(self, conversation_id: FromPath[str], me: Member, ctx: Deps) -> Response:
        chat.delete(ctx.db, me.account.id, me.user.id, conversation_id, ctx.now())
        return ctx.redirect("/chat", "Conversation deleted.")


def _rename(ctx: Ctx, me: Identity, conversation_id: str, title: Any) -> chat.Conversation:
    return chat.rename(ctx.db, me.account.id, me.user.id, conversation_id, title, ctx.now())


def _drawer(request: Request) -> Callable[[dict[str, Any]], str]:
    """A message drawn by chat.html's own macro (templates/chat/messages.html)."""
    macros = request.app.template_engine.engine.get_template("chat/messages.html").module
    return lambda message: str(macros.render_message(message))


def _context(db, me: Identity, conversation: chat.Conversation | None, q: str | None) -> dict:
    every = instances.list_instances(db, me.account.id)
    names = {i.id: i for i in every}
    return {
        "me": me,
        "q": q or "",
        "conversations": chat.list_for_user(db, me.account.id, me.user.id, query=q),
        "conversation": conversation,
        "instance": names.get(conversation.instance_id) if conversation else None,
        "messages": conversation_view(db, me.account.id, conversation)["messages"]
        if conversation
        else [],
        "instances": [i for i in every if i.state == "running"],
    }


async def respond(
    stream: Any,
    ctx: Ctx,
    me: Identity,
    conversation_id: str,
    *,
    content: str | None = None,
    edit_message_id: str | None = None,
    request: Request | None = None,
    draw: Callable[[dict[str, Any]], str] | None = None,
) -> Response | Stream:
    """Answer the turn: its events as SSE, or with ``stream`` false, ``{"user",
    "message"}``. A refusal raises before anything is sent (an HTTP error status).
    ``draw``: the page's stream, whose ``user`` and ``done`` events also carry the
    message's ``article`` as the page draws it."""
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false.")
    events = answer.answer(
        ctx.db,
        ctx.settings,
        ctx.inference,
        ctx.clock,
        account_id=me.account.id,
        user_id=me.user.id,
        key_id=me.key_id,
        conversation_id=conversation_id,
        content=content,
        edit_message_id=edit_message_id,
        status=stream,
        on_turn=None if request is None else lambda i: setattr(request.state, "instance_id", i),
    )
    started = await anext(events)  # answer.Started, once the turn is prepared
    if stream:
        return event_stream(_sse(started, events, draw))
    end = [e async for e in events if isinstance(e, answer.Done | answer.Failed)][-1]
    if isinstance(end, answer.Failed):
        raise end.error
    return Response({"user": started.user, "message": end.message})


async def _sse(
    started: answer.Started,
    events: AsyncIterator[answer.Event],
    draw: Callable[[dict[str, Any]], str] | None,
) -> AsyncIterator[str]:
    def with_message(kind: str, message: dict[str, Any] | None) -> str:
        event = {"type": kind, "message": message}
        if draw is not None and message is not None:
            event["article"] = draw(message)
        return sse(event)

    if started.user is not None:
        yield with_message("user", started.user)
    async for event in events:
        match event:
            case answer.Status(text):
                yield sse({"type": "status", "text": text})
            case answer.Delta(text):
                yield sse({"type": "delta", "text": text})
            case answer.Done(message):
                yield with_message("done", message)
            case answer.Failed(error):
                yield sse({**stream_error(error), "type": "error"})
