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
from dataclasses import dataclass
from typing import Any

from anyio.to_thread import run_sync
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from appliance.billing.metering import Metered, embed_metered, token_counts
from appliance.chat import prompt
from appliance.chat import service as chat
from appliance.db import pooled
from appliance.errors import ApplianceError, Conflict, NotFound
from appliance.inference import openai_schema as schema
from appliance.inference.client import InferenceClient, started
from appliance.instances import service as instances
from appliance.web import errors, responses
from appliance.web.deps import Ctx, Deps, Member
from appliance.web.errors import EXCEPTION_HANDLERS, stream_error
from appliance.web.identity import Identity
from appliance.web.sse import event_stream, sse

#: Request fields the web process handles itself; the rest go to the inference service,
#: which checks them again with the same schema.
OWN_FIELDS = {"model", "messages", "stream", "stream_options", "appliance"}
OWN_FIELDS |= {"max_tokens", "max_completion_tokens"}
#: The inference service's route for legacy completions.
LEGACY = "/v1/completions"
#: What ``appliance.passages`` says of each passage.
PASSAGE_FIELDS = ("number", "document_id", "filename", "page", "heading")
#: OpenAI's error codes for our statuses (``param`` and ``code`` of InvalidParam win).
CODES = {**errors.CODES, 401: "invalid_api_key"}


def _instance(db, key: Identity, name: Any) -> instances.Instance:
    if not isinstance(name, str) or not name:
        raise schema.InvalidParam(
            "'model' must be the name of one of your instances.", "model", "model_not_found"
        )
    try:
        instance = instances.by_name(db, key.account.id, name)
    except NotFound:
        raise _no_model(name) from None
    bound = key.key.instance_id if key.key else None
    if bound and bound != instance.id:
        raise _no_model(name)
    if instance.state != "running":
        raise Conflict(f"The instance '{name}' is stopped; start it to use it.")
    return instance


class _ModelNotFound(NotFound):
    param = "model"
    code = "model_not_found"


def _no_model(name: str) -> NotFound:
    return _ModelNotFound(f"The model '{name}' does not exist.")


def prepare(ctx: Ctx, key: Identity, body: Any) -> tuple[_Run, chat.Composed, Any, Any]:
    """The request for the inference service (prompt assembled) under its billing hold,
    what it was composed of, the checked request and where to keep the exchange
    (``appliance.store``; None: nowhere). On a thread: one hop for all the work before
    the model. Errors name the client's fields (``messages[i]`` as it sent them)."""
    db, settings = ctx.db, ctx.settings
    request = schema.decode(body, schema.ChatCompletionRequest)
    schema.check_chat(request, max_n=settings.inference.max_choices)
    messages = schema.clean_messages(request.messages)
    instance = _instance(db, key, request.model)
    ctx.request.state.instance_id = instance.id  # for the request log, a 402 included
    options = body.get("appliance") or {}
    if not isinstance(options, dict):
        raise schema.InvalidParam("'appliance' must be an object.", "appliance")
    own_system = [m["content"] for m in messages if m["role"] == "system"]
    conversation = [m for m in messages if m["role"] != "system"]
    if not conversation:
        raise schema.InvalidParam("There is no message to answer.", "messages")
    forwarded = {k: v for k, v in body.items() if k not in OWN_FIELDS and v is not None}
    composed = chat.compose(
        db,
        settings,
        ctx.inference,
        key.account.id,
        instance,
        conversation,
        ctx.now(),
        own_system="\n\n".join(own_system) if own_system else None,
        knowledge=options.get("knowledge", True) is not False,
        max_tokens=schema.max_tokens_of(request),
        overrides=forwarded,
    )
    store = _store_target(ctx, key, instance, options, conversation)
    return _held(ctx, key, instance, composed, request.n or 1), composed, request, store


def _error(request: Request, exc: Exception) -> Response:
    """OpenAI's error shape for every ``/v1`` error: message, type, param, code."""
    handle = next(h for kind, h in EXCEPTION_HANDLERS.items() if isinstance(exc, kind))
    response = handle(request, exc)
    error = dict(response.content["error"])
    error["param"] = getattr(exc, "param", None)
    error["code"] = getattr(exc, "code", None) or CODES.get(response.status_code)
    response.content = {"error": error}
    return response


def _held(ctx: Ctx, key: Identity, instance, composed: chat.Composed, choices: int) -> _Run:
    """Reserve the most the request can cost, every choice's answer included (402 when the
    credit or a spend cap does not cover it)."""
    payload = composed.payload
    most = {**payload, "max_tokens": payload["max_tokens"] * choices}
    tokens, recount = composed.prompt_tokens, composed.recount
    payer = ctx.db, ctx.settings, key.account.id, key.key_id
    metered = Metered.reserve(
        *payer, instance, most, ctx.clock, prompt_tokens=tokens, recount=recount
    )
    return _Run(metered, ctx.inference, payload, key.account.id, instance.name)


def _completion(ctx: Ctx, key: Identity, checked: Any, body: dict) -> _Run:
    """A legacy completion's request under its hold (on a thread, as ``prepare``)."""
    prompt = schema.completion_prompt(checked)
    instance = _instance(ctx.db, key, checked.model)
    ctx.request.state.instance_id = instance.id  # for the request log
    payload = {k: v for k, v in body.items() if k != "model" and v is not None}
    payload = {"temperature": instance.temperature, "top_p": instance.top_p, **payload}
    payload.setdefault("max_tokens", 16)  # OpenAI's default for this endpoint
    (bound,) = chat.byte_bounds([prompt])
    recount = lambda: token_counts(ctx.inference, [prompt], "chat")[0]  # noqa: E731
    return _held(ctx, key, instance, chat.Composed(payload, [], bound, 0, recount), checked.n or 1)


class V1Api(Controller):
    path = "/v1"
    tags = ["v1"]
    exception_handlers = {ApplianceError: _error, HTTPException: _error, Exception: _error}

    @get("/models", sync_to_thread=True)
    def models(self, api_key: Member, ctx: Deps) -> dict:
        """The account's running instances, under their names (OpenAI's list shape)."""
        bound = api_key.key.instance_id if api_key.key else None
        data = [
            _model_json(instance, api_key)
            for instance in instances.list_instances(ctx.db, api_key.account.id)
            if instance.state == "running" and (not bound or instance.id == bound)
        ]
        return {"object": "list", "data": data}

    @get("/models/{model_id:str}", sync_to_thread=True)
    def model(self, model_id: FromPath[str], api_key: Member, ctx: Deps) -> dict:
        """One running instance (404 ``model_not_found`` otherwise, or for a bound key's
        other instances)."""
        try:
            return _model_json(_instance(ctx.db, api_key, model_id), api_key)
        except Conflict:
            raise _no_model(model_id) from None

    @post("/chat/completions", status_code=200)
    async def chat_completions(self, api_key: Member, ctx: Deps) -> Response | Stream:
        """A chat completion from one of the account's instances (streaming or not)."""
        body = await _json_body(ctx.request)
        run, composed, checked, store = await run_sync(prepare, ctx, api_key, body)
        passages = composed.passages
        if checked.stream:
            usage = _include_usage(checked)
            return event_stream(_relay(await run.chunks(), run.name, usage, store, passages))
        answer = await run.answer()
        extra: dict[str, Any] = {}
        if passages:
            extra["passages"] = [{k: getattr(p, k) for k in PASSAGE_FIELDS} for p in passages]
        if store is not None:
            text = answer["choices"][0]["message"].get("content") or ""
            used = chat.usage_counts(answer.get("usage"))
            extra["conversation_id"] = await run_sync(store, text, used, passages)
        if extra:
            answer["appliance"] = extra
        return Response(answer)

    @post("/responses", status_code=200)
    async def responses(self, request: Request, api_key: Member, ctx: Deps) -> Response | Stream:
        """OpenAI's Responses API, stateless (appliance/web/responses.py): answered as a
        chat completion (system prompt, knowledge base, metering and all)."""
        body = await _json_body(request)
        converted = responses.chat_body(body)
        run, _, checked, _ = await run_sync(prepare, ctx, api_key, converted)
        response_id = responses.new_id()
        if checked.stream:
            chunks = await run.chunks()
            return event_stream(responses.events(body, chunks, response_id, run.name))
        return Response(responses.response(body, await run.answer(), response_id))

    @post("/completions", status_code=200)
    async def completions(self, request: Request, api_key: Member, ctx: Deps) -> Response | Stream:
        """A legacy completion (``prompt`` in, text out) from one of the account's instances:
        the prompt as it is, without the instance's system prompt or knowledge base;
        metered like chat."""
        body = await _json_body(request)
        checked = schema.decode(body, schema.CompletionRequest)
        run = await run_sync(_completion, ctx, api_key, checked, body)
        if checked.stream:
            usage = _include_usage(checked)
            return event_stream(_relay(await run.chunks(path=LEGACY), run.name, usage))
        return Response(await run.answer(path=LEGACY))

    @post("/embeddings", status_code=200, sync_to_thread=True)
    def embeddings(self, request: Request, data: JSONBody[Any], api_key: Member, ctx: Deps) -> dict:
        """Embeddings from the appliance's embedding model (``model``: an instance name),
        metered like chat (402 past the credit or a spend cap). ``encoding_format``
        ``base64`` is little-endian float32, as OpenAI's; ``dimensions`` keeps the first
        ones, renormalised."""
        parsed = schema.decode(data, schema.EmbeddingRequest)
        texts = schema.embedding_texts(parsed)
        instance = _instance(ctx.db, api_key, parsed.model)
        request.state.instance_id = instance.id  # for the request log
        if parsed.dimensions is not None and parsed.dimensions < 1:
            raise schema.InvalidParam("'dimensions' must be at least 1.", "dimensions")
        payer = ctx.db, ctx.settings, ctx.inference, api_key.account.id, api_key.key_id
        vectors, tokens = embed_metered(*payer, instance, texts, ctx.clock)
        return {
            "object": "list",
            "model": instance.name,
            "data": schema.embedding_data(vectors, parsed),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


@dataclass(frozen=True)
class _Run:
    """One request to the model under a hold: streamed or answered whole."""

    metered: Metered
    inference: InferenceClient
    payload: dict[str, Any]
    account_id: str
    name: str

    async def chunks(self, **options: Any) -> AsyncIterator[dict[str, Any]]:
        """The answer's chunks, once the model has started (refused with 429 or 503 and
        Retry-After before that, not inside a 200 stream)."""
        relayed = self.metered.observe(self.inference)
        return await started(
            relayed.astream_chat(self.payload, account_id=self.account_id, **options)
        )

    async def answer(self, **options: Any) -> dict[str, Any]:
        """The whole answer, under the instance's name; what it used is settled."""
        async with self.metered:
            answer = await self.inference.achat(self.payload, account_id=self.account_id, **options)
            self.metered.usage = answer.get("usage")
        answer["model"] = self.name
        return answer


def _model_json(instance: instances.Instance, api_key: Identity) -> dict[str, Any]:
    return {"id": instance.name, "object": "model", "created": 0, "owned_by": api_key.account.name}


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise schema.InvalidParam("The request body is not valid JSON.") from None


def _include_usage(checked: Any) -> bool:
    return bool(checked.stream_options and checked.stream_options.include_usage)


def _store_target(ctx: Ctx, key: Identity, instance, options: dict, conversation: list) -> Any:
    """Checked ``appliance.store`` / ``appliance.conversation_id``: a function that keeps
    the exchange and returns its conversation's id, or None when it is not to be kept."""
    store = options.get("store", False)
    if not isinstance(store, bool):
        raise schema.InvalidParam("'appliance.store' must be true or false.", "appliance.store")
    conversation_id = options.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise schema.InvalidParam(
            "'appliance.conversation_id' must be a string.", "appliance.conversation_id"
        )
    if not store:
        return None
    settings, clock = ctx.settings, ctx.clock
    if conversation_id is not None:
        found = chat.get(ctx.db, key.account.id, key.user.id, conversation_id)
        if found.instance_id != instance.id:
            raise NotFound("No such conversation on this instance.")
    messages = [
        {"role": m["role"], "content": m["content"]}
        for m in conversation
        if m.get("role") in ("user", "assistant")
    ]

    def save(text: str, usage: dict[str, int], passages) -> str:
        with pooled(settings) as db:
            return chat.store_exchange(
                db,
                key.account.id,
                key.user.id,
                instance,
                messages,
                text,
                clock(),
                conversation_id=conversation_id,
                passages=passages,
                usage=usage,
            )

    return save


async def _relay(
    chunks: AsyncIterator[dict[str, Any]],
    name: str,
    include_usage: bool,
    store: Any = None,
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
                if choice.get("index", 0) == 0:
                    parts.append((choice.get("delta") or {}).get("content") or "")
            if not chunk.get("choices") and "usage" in chunk and not include_usage:
                continue  # our client always asks for usage; OpenAI sends it only on request
            if "model" in chunk:
                chunk["model"] = name
            yield sse(chunk)
    except ApplianceError as exc:
        yield sse({"error": stream_error(exc)})
    else:
        if store is not None:
            text = "".join(parts)
            conversation_id = await run_sync(store, text, chat.usage_counts(usage), passages or [])
            final = {
                "id": last.get("id", ""),
                "object": "chat.completion.chunk",
                "created": last.get("created", 0),
                "model": name,
                "choices": [],
                "appliance": {"conversation_id": conversation_id},
            }
            yield sse(final)
    yield sse("[DONE]")
