"""The account's OpenAI-compatible endpoint (``/v1``): bearer keys with scope ``inference``.

``model`` is the name of one of the account's instances. The instance's system prompt
(or the account's persona prompt with voice excerpts) and, when the instance has it on,
passages from the account's knowledge base are added, unless the request brings its own
system message or sets ``"appliance": {"knowledge": false}``. A key bound to an instance
can use only that instance. A session cookie alone never authorises these routes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream

from appliance.billing.metering import Metered, embed_metered
from appliance.chat import prompt
from appliance.chat import service as chat
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError, Conflict, InvalidInput, NotFound
from appliance.inference.client import InferenceClient, started
from appliance.instances import service as instances
from appliance.web.errors import stream_error
from appliance.web.identity import Identity

#: Request fields passed on to the model (checked again by the inference service).
FORWARDED = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop")
ACCEPTED = {*FORWARDED, "model", "messages", "stream", "stream_options", "user", "n", "appliance"}


def _instance(db, key: Identity, name: Any) -> instances.Instance:
    if not isinstance(name, str) or not name:
        raise InvalidInput("'model' must be the name of one of your instances.")
    instance = instances.by_name(db, key.account.id, name)
    bound = key.key.instance_id if key.key else None
    if bound and bound != instance.id:
        raise NotFound(f"The model '{name}' does not exist.")
    if instance.state != "running":
        raise Conflict(f"The instance '{name}' is stopped; start it to use it.")
    return instance


def build_request(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    key: Identity,
    body: Any,
    now,
) -> tuple[instances.Instance, chat.Composed]:
    """The instance and the request for the inference service (prompt assembled)."""
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    unknown = sorted(set(body) - ACCEPTED)
    if unknown:
        raise InvalidInput(f"Unsupported parameter: '{unknown[0]}'.")
    instance = _instance(db, key, body.get("model"))
    options = body.get("appliance") or {}
    if not isinstance(options, dict):
        raise InvalidInput("'appliance' must be an object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InvalidInput(f"messages[{index}] must have a string 'content'.")
    own_system = [m for m in messages if m.get("role") in ("system", "developer")]
    conversation = [m for m in messages if m.get("role") not in ("system", "developer")]
    forwarded = {name: body[name] for name in FORWARDED if name in body}
    forwarded.pop("max_completion_tokens", None)
    forwarded.pop("max_tokens", None)
    composed = chat.compose(
        db,
        settings,
        client,
        key.account.id,
        instance,
        conversation,
        now,
        own_system="\n\n".join(m["content"] for m in own_system) if own_system else None,
        knowledge=options.get("knowledge", True) is not False,
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
        overrides=forwarded,
    )
    return instance, composed


class V1Api(Controller):
    path = "/v1"
    tags = ["v1"]

    @get("/models", sync_to_thread=True)
    def models(
        self, api_key: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> dict:
        """The account's running instances, under their names (OpenAI's list shape)."""
        bound = api_key.key.instance_id if api_key.key else None
        data = [
            {
                "id": instance.name,
                "object": "model",
                "created": 0,
                "owned_by": api_key.account.name,
            }
            for instance in instances.list_instances(db, api_key.account.id)
            if instance.state == "running" and (not bound or instance.id == bound)
        ]
        return {"object": "list", "data": data}

    @post("/chat/completions", status_code=200)
    async def chat_completions(
        self,
        request: Request,
        api_key: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> Response | Stream:
        """A chat completion from one of the account's instances (streaming or not)."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InvalidInput("The request body is not valid JSON.") from None
        instance, composed = await anyio.to_thread.run_sync(
            lambda: build_request(db, settings, inference, api_key, body, clock())
        )
        payload, passages = composed.payload, composed.passages
        request.state.instance_id = instance.id  # for the request log
        store = await anyio.to_thread.run_sync(
            lambda: _store_target(db, settings, clock, api_key, instance, body)
        )
        account_id = api_key.account.id
        # Reserves the most this request can cost (402 when the credit does not cover it).
        metered = await Metered.start(
            db,
            settings,
            inference,
            api_key.account.id,
            api_key.key.id if api_key.key else None,
            instance,
            payload,
            clock,
            prompt_tokens=composed.prompt_tokens,
        )
        if body.get("stream"):
            if body.get("stream_options"):
                payload["stream_options"] = body["stream_options"]
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            # Refused (429, 503)? Then with that status and Retry-After, not in a 200 stream.
            chunks = await started(
                metered.observe(inference).astream_chat(payload, account_id=account_id)
            )
            return Stream(
                _relay(
                    chunks,
                    instance.name,
                    include_usage,
                    store,
                    passages,
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async with metered:
            answer = await inference.achat(payload, account_id=account_id)
            metered.usage = answer.get("usage")
        answer["model"] = instance.name
        extra: dict[str, Any] = {}
        if passages:
            extra["passages"] = [_passage_json(p) for p in passages]
        if store is not None:
            text = answer["choices"][0]["message"].get("content") or ""
            extra["conversation_id"] = await anyio.to_thread.run_sync(
                lambda: store.save(text, chat.usage_counts(answer.get("usage")), passages)
            )
        if extra:
            answer["appliance"] = extra
        return Response(answer)

    @post("/embeddings", status_code=200, sync_to_thread=True)
    def embeddings(
        self,
        request: Request,
        data: JSONBody[dict[str, Any]],
        api_key: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        inference: NamedDependency[InferenceClient],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Embeddings from the appliance's embedding model (``model``: an instance name),
        metered like chat (402 past the credit or a spend cap)."""
        instance = _instance(db, api_key, data.get("model"))
        request.state.instance_id = instance.id  # for the request log
        texts = data.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidInput("'input' must be a string or a list of strings.")
        vectors, tokens = embed_metered(
            db,
            settings,
            inference,
            api_key.account.id,
            api_key.key.id if api_key.key else None,
            instance,
            texts,
            clock,
        )
        return {
            "object": "list",
            "model": instance.name,
            "data": [
                {"object": "embedding", "index": i, "embedding": vector}
                for i, vector in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _passage_json(passage: prompt.Passage) -> dict[str, Any]:
    return {
        "number": passage.number,
        "document_id": passage.document_id,
        "filename": passage.filename,
        "page": passage.page,
        "heading": passage.heading,
    }


class _StoreTarget:
    """Where a ``"appliance": {"store": true}`` exchange is kept."""

    def __init__(self, settings, api_key: Identity, instance, messages, conversation_id, clock):
        self.settings = settings
        self.api_key = api_key
        self.instance = instance
        self.messages = messages
        self.conversation_id = conversation_id
        self.clock = clock

    def save(self, text: str, usage: dict[str, int], passages) -> str:
        db = open_db(self.settings, migrate=False)
        try:
            return chat.store_exchange(
                db,
                self.api_key.account.id,
                self.api_key.user.id,
                self.instance,
                self.messages,
                text,
                self.clock(),
                conversation_id=self.conversation_id,
                passages=passages,
                usage=usage,
            )
        finally:
            db.close()


def _store_target(
    db, settings: Settings, clock: Clock, api_key: Identity, instance, body: dict
) -> _StoreTarget | None:
    """Checked ``appliance.store`` / ``appliance.conversation_id`` of a request."""
    options = body.get("appliance") or {}
    store = options.get("store", False)
    if not isinstance(store, bool):
        raise InvalidInput("'appliance.store' must be true or false.")
    conversation_id = options.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise InvalidInput("'appliance.conversation_id' must be a string.")
    if not store:
        return None
    if conversation_id is not None:
        found = chat.get(db, api_key.account.id, api_key.user.id, conversation_id)
        if found.instance_id != instance.id:
            raise NotFound("No such conversation on this instance.")
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in body["messages"]
        if m.get("role") in ("user", "assistant")
    ]
    return _StoreTarget(settings, api_key, instance, messages, conversation_id, clock)


async def _relay(
    chunks: AsyncIterator[dict[str, Any]],
    name: str,
    include_usage: bool,
    store: _StoreTarget | None = None,
    passages: list[prompt.Passage] | None = None,
) -> AsyncIterator[str]:
    """Re-emit the inference service's SSE chunks under the instance's name; keep the
    exchange when asked to (a final chunk then carries ``appliance.conversation_id``)."""
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    try:
        async for chunk in chunks:
            last = chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
            if not chunk.get("choices") and "usage" in chunk and not include_usage:
                continue  # our client always asks for usage; OpenAI sends it only on request
            if "model" in chunk:
                chunk["model"] = name
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApplianceError as exc:
        yield f"data: {json.dumps({'error': stream_error(exc)})}\n\n"
    else:
        if store is not None:
            text = "".join(parts)
            conversation_id = await anyio.to_thread.run_sync(
                lambda: store.save(text, chat.usage_counts(usage), passages or [])
            )
            final = {
                "id": last.get("id", ""),
                "object": "chat.completion.chunk",
                "created": last.get("created", 0),
                "model": name,
                "choices": [],
                "appliance": {"conversation_id": conversation_id},
            }
            yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"
