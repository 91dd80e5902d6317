"""The inference service: a local HTTP API shaped like OpenAI's, in front of the engine.

Listens on loopback by default; every ``/v1`` call needs the internal bearer key from
``DATA_DIR/secrets/inference_key``. The account id and priority come in headers set by
``InferenceClient``; the web process strips them from anything users send.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

import appliance
from appliance import vault
from appliance.config import Settings
from appliance.errors import InvalidInput, Unavailable
from appliance.inference import gpu, rerank
from appliance.inference.base import Delta, Finish, GenerationParams
from appliance.inference.client import ACCOUNT_HEADER, PRIORITY_HEADER
from appliance.inference.engine import Engine, load_engine
from appliance.inference.scheduler import DONE, AccountBusy, Failed, Job, Scheduler

log = logging.getLogger("appliance.inference")

ROLES = ("system", "user", "assistant", "developer")
#: Fields accepted for OpenAI compatibility that change nothing here.
IGNORED_CHAT_FIELDS = {"user", "n", "logprobs", "frequency_penalty", "presence_penalty"}
CHAT_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
} | IGNORED_CHAT_FIELDS
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "user", "dimensions"}
MAX_MESSAGES = 1000
MAX_EMBED_INPUTS = 2048
MAX_TEXT_CHARS = 1_000_000


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    params: GenerationParams
    stream: bool
    include_usage: bool


#: OpenAI's error codes for refusals (its SDKs retry 429 and 503 after ``Retry-After``).
CODES = {429: "rate_limit_exceeded", 503: "service_unavailable"}


#: OpenAI's error codes for refusals (its SDKs retry 429 and 503 after ``Retry-After``).
CODES = {429: "rate_limit_exceeded", 503: "service_unavailable"}
KINDS = {429: "rate_limit_error", 503: "server_busy"}


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"message": message, "type": kind, "param": None, "code": CODES.get(status)}


def api_error(status: int, message: str, kind: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after or 2)} if status in CODES else {}
    return Response(
        {"error": error_body(status, message, kind)},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def failed_error(event: Failed) -> Response:
    kind = KINDS.get(event.status, "invalid_request_error")
    return api_error(event.status, event.message, kind, event.retry_after)


def failed_chunk(event: Failed) -> str:
    """A stream's error event: the status and Retry-After the request would have got."""
    error = error_body(event.status, event.message, KINDS.get(event.status, "server_error"))
    error.update(status=event.status, retry_after=event.retry_after)
    return f"data: {json.dumps({'error': error})}\n\n"


def parse_chat(body: Any, settings: Settings, model_id: str) -> ChatRequest:
    """Validate a chat completion request; raises InvalidInput naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:
        raise InvalidInput(f"Unsupported parameter: '{unknown[0]}'.")
    _check_model(body.get("model"), model_id)
    # OpenAI's clients may send null for any optional field: null means the default.
    body = {key: value for key, value in body.items() if value is not None}
    if body.get("n", 1) != 1:
        raise InvalidInput("'n' must be 1.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list.")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInput(f"'messages' may hold at most {MAX_MESSAGES} messages.")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidInput(
                f"messages[{index}] must be an object with a role of {', '.join(ROLES)}."
            )
        content = _text_content(message.get("content"), f"messages[{index}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        clean.append({"role": role, "content": content})
    cap = settings.inference.max_tokens
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = cap if max_tokens is None else _int(max_tokens, "max_tokens", 1, cap)
    temperature = _number(body.get("temperature", 0.7), "temperature", 0.0, 2.0)
    top_p = _number(body.get("top_p", 0.95), "top_p", 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None:
        seed = _int(seed, "seed", 0, 2**31 - 1)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if (
        not isinstance(stop, list)
        or len(stop) > 4
        or not all(isinstance(s, str) and 0 < len(s) <= 64 for s in stop)
    ):
        raise InvalidInput("'stop' must be a string or a list of up to 4 strings (≤ 64 chars).")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidInput("'stream' must be true or false.")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidInput("'stream_options' must be an object.")
    return ChatRequest(
        messages=clean,
        params=GenerationParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p if top_p > 0 else 1e-6,
            seed=seed,
            stop=tuple(stop),
        ),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def parse_embeddings(body: Any, model_id: str) -> tuple[list[str], str]:
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    unknown = sorted(set(body) - EMBEDDING_FIELDS)
    if unknown:
        raise InvalidInput(f"Unsupported parameter: '{unknown[0]}'.")
    _check_model(body.get("model"), model_id)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or len(texts) > MAX_EMBED_INPUTS:
        raise InvalidInput(f"'input' must be a string or a list of 1 to {MAX_EMBED_INPUTS}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(f"input[{index}] must be a non-empty string.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInput("'encoding_format' must be 'float' or 'base64'.")
    return texts, encoding


def _check_model(requested: Any, loaded: str) -> None:
    if requested is not None and requested != loaded:
        raise InvalidInput(f"The model '{requested}' is not served here; use '{loaded}'.")


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidInput(f"{where} may only hold text parts.")
            if not isinstance(part.get("text"), str):
                raise InvalidInput(f"{where}: a text part needs a 'text' string.")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise InvalidInput(f"{where} must be a string.")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where} is too long.")
    return text


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"'{name}' must be an integer from {low} to {high}.")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidInput(f"'{name}' must be a number from {low} to {high}.")
    return float(value)


class InferenceService:
    """The engine, its two schedulers, and the request handlers' shared state."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.key = vault.read_secret(settings, "inference_key")
        cfg = settings.inference
        bounds = {
            "queue_size": cfg.queue_size,
            "per_account": cfg.per_account_queue,
            "account_wait": cfg.account_wait_seconds,
        }
        self.chat = Scheduler("chat", engine.chat, **bounds)
        self.embeddings = Scheduler("embeddings", self._run_embeddings, **bounds)
        self.started = time.time()

    def _run_embeddings(self, job: Job):
        # Reranks share the embeddings' queue and thread: both are encoder passes on the
        # same cores, and a search waits for the one before the other anyway.
        if isinstance(job.payload, rerank.RerankRequest):
            assert self.engine.rerank is not None
            yield self.engine.rerank.score(job.payload.query, job.payload.documents)
            return
        if self.engine.embedding is None:
            raise InvalidInput("No embedding model is loaded.")
        yield self.engine.embedding.embed(job.payload)

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.key.encode())

    def job(self, request: Request, payload: Any) -> Job:
        return Job(
            account=request.headers.get(ACCOUNT_HEADER, "") or "-",
            payload=payload,
            loop=asyncio.get_running_loop(),
            priority=request.headers.get(PRIORITY_HEADER, "interactive"),
        )


def create_inference_app(settings: Settings, engine: Engine) -> Litestar:
    """The inference HTTP app around an already loaded engine."""
    service = InferenceService(settings, engine)
    model_id = engine.info.chat_model
    embed_id = engine.info.embedding_model

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            raise InvalidInput("The request body is not valid JSON.") from None

    def guard(request: Request) -> Response | None:
        if not service.authorized(request):
            return api_error(401, "Missing or wrong inference key.", "authentication_error")
        return None

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request) -> Response | Stream:
        denied = guard(request)
        if denied:
            return denied
        chat = parse_chat(await read_json(request), settings, model_id)
        job = service.job(request, chat)
        await service.chat.enter(job)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            return Stream(
                _sse(service, job, chat, completion_id, created, model_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        parts: list[str] = []
        finish: Finish | None = None
        async for event in _events_until_disconnect(service.chat, job, request):
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Finish):
                finish = event
            elif isinstance(event, Failed):
                return failed_error(event)
        if finish is None:  # the client went away
            return api_error(499, "Client closed the request.", "cancelled")
        return Response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "finish_reason": finish.reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(finish),
            }
        )

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request) -> Response:
        denied = guard(request)
        if denied:
            return denied
        texts, encoding = parse_embeddings(await read_json(request), embed_id or "")
        job = service.job(request, texts)
        await service.embeddings.enter(job)
        result = None
        async for event in _events_until_disconnect(service.embeddings, job, request):
            if isinstance(event, Failed):
                return failed_error(event)
            result = event
        if result is None:
            return api_error(499, "Client closed the request.", "cancelled")
        vectors, tokens = result
        data = []
        for index, vector in enumerate(vectors):
            if encoding == "base64":
                value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        return Response(
            {
                "object": "list",
                "data": data,
                "model": embed_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @post("/v1/rerank", status_code=200)
    async def rerank_documents(request: Request) -> Response:
        """Relevance of each document to the query, best first (llama-server's shape)."""
        denied = guard(request)
        if denied:
            return denied
        if engine.rerank is None:
            return api_error(
                501, "No reranker is loaded (inference.rerank_model).", "not_implemented"
            )
        rerank_id = engine.rerank.model.id
        parsed = rerank.parse_rerank(await read_json(request), rerank_id)
        job = service.job(request, parsed)
        await service.embeddings.enter(job)
        result = None
        async for event in _events_until_disconnect(service.embeddings, job, request):
            if isinstance(event, Failed):
                return failed_error(event)
            result = event
        if result is None:
            return api_error(499, "Client closed the request.", "cancelled")
        scores, tokens = result
        return Response(rerank.response(parsed, scores, tokens, rerank_id))

    @post("/tokenize", status_code=200)
    async def tokenize(request: Request) -> Response:
        """Token counts of texts in the embedding model's tokenizer (for chunk sizing)."""
        denied = guard(request)
        if denied:
            return denied
        body = await read_json(request)
        texts = body.get("input") if isinstance(body, dict) else None
        if (
            not isinstance(texts, list)
            or len(texts) > 100_000
            or not all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS for t in texts)
        ):
            raise InvalidInput("'input' must be a list of strings.")
        if body.get("model") == "chat":
            counts = await asyncio.to_thread(engine.chat.count_tokens, texts)
            return Response({"model": model_id, "counts": counts})
        if engine.embedding is None:
            raise InvalidInput("No embedding model is loaded.")
        counts = await asyncio.to_thread(engine.embedding.count_tokens, texts)
        return Response({"model": embed_id, "counts": counts})

    @get("/v1/models")
    async def list_models(request: Request) -> Response:
        denied = guard(request)
        if denied:
            return denied
        created = int(service.started)
        rerank_id = engine.info.rerank_model
        ids = [model_id, *([embed_id] if embed_id else []), *([rerank_id] if rerank_id else [])]
        return Response(
            {
                "object": "list",
                "data": [
                    {"id": i, "object": "model", "created": created, "owned_by": "appliance"}
                    for i in ids
                ],
            }
        )

    @get("/healthz")
    async def healthz() -> dict[str, Any]:
        info = engine.info
        return {
            "status": "ok",
            "version": appliance.__version__,
            "chat_model": info.chat_model,
            "embedding_model": info.embedding_model,
            "rerank_model": info.rerank_model,
            "n_ctx": info.n_ctx,
            "device": info.device,
            "gpu_offload_supported": info.gpu_offload_supported,
            "gpu_layers": info.gpu_layers,
            "model_layers": info.model_layers,
            "cpu_repack": info.cpu_repack,
            "queue": service.chat.waiting + service.embeddings.waiting,
            "gpus": await asyncio.to_thread(gpu.memory),
            "batching": _batching(service),
        }

    @get("/metrics", media_type=MediaType.TEXT)
    async def metrics() -> str:
        return _prometheus(service)

    def on_startup() -> None:
        service.chat.start()
        service.embeddings.start()

    def on_shutdown() -> None:
        service.chat.stop()
        service.embeddings.stop()

    def invalid(request: Request, exc: InvalidInput) -> Response:
        return api_error(400, str(exc), "invalid_request_error")

    def unavailable(request: Request, exc: Unavailable) -> Response:
        return api_error(503, str(exc), "server_busy", exc.retry_after)

    def busy(request: Request, exc: AccountBusy) -> Response:
        return api_error(429, str(exc), "rate_limit_error", exc.retry_after)

    def http_error(request: Request, exc: HTTPException) -> Response:
        return api_error(exc.status_code, str(exc.detail), "invalid_request_error")

    app = Litestar(
        route_handlers=[
            chat_completions,
            embeddings,
            rerank_documents,
            tokenize,
            list_models,
            healthz,
            metrics,
        ],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        exception_handlers={
            InvalidInput: invalid,
            Unavailable: unavailable,
            AccountBusy: busy,
            HTTPException: http_error,
        },
        request_max_body_size=16 * 1024 * 1024,
        openapi_config=None,
        logging_config=None,  # the CLI configured JSON lines (privacy/logs.py); keep them
    )
    app.state.service = service
    return app


async def _events_until_disconnect(
    scheduler: Scheduler, job: Job, request: Request
) -> AsyncIterator[Any]:
    """The job's events; cancels the job if the client disconnects first."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                scheduler.cancel(job)
                return

    watcher = asyncio.create_task(watch())
    try:
        while True:
            event = await job.events.get()
            if event is DONE:
                return
            if job.cancelled.is_set():
                continue
            yield event
    finally:
        watcher.cancel()


async def _sse(
    service: InferenceService,
    job: Job,
    chat: ChatRequest,
    completion_id: str,
    created: int,
    model_id: str,
) -> AsyncIterator[str]:
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if event is DONE:
                break
            if isinstance(event, Delta):
                yield chunk({"content": event.text})
            elif isinstance(event, Finish):
                yield chunk({}, finish=event.reason)
                if chat.include_usage:
                    yield chunk({}, usage=_usage(event))
            elif isinstance(event, Failed):
                yield failed_chunk(event)
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        if not finished:
            # The client went away (Litestar cancels the stream): free the slot now.
            service.chat.cancel(job)


def _usage(finish: Finish) -> dict[str, Any]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
    }


def _prometheus(service: InferenceService) -> str:
    lines = []
    for scheduler in (service.chat, service.embeddings):
        s = scheduler.stats
        label = f'kind="{scheduler.name}"'
        lines += [
            f"appliance_inference_queue_length{{{label}}} {scheduler.waiting}",
            f"appliance_inference_running{{{label}}} {len(scheduler.active)}",
            f'appliance_inference_requests_total{{{label},status="completed"}} {s.completed}',
            f'appliance_inference_requests_total{{{label},status="cancelled"}} {s.cancelled}',
            f'appliance_inference_requests_total{{{label},status="failed"}} {s.failed}',
            f'appliance_inference_requests_total{{{label},status="rejected_full"}} '
            f"{s.rejected_full}",
            f'appliance_inference_requests_total{{{label},status="rejected_account"}} '
            f"{s.rejected_account}",
            f"appliance_inference_account_waits_total{{{label}}} {s.held}",
            f"appliance_inference_busy_seconds_total{{{label}}} {s.busy_seconds:.3f}",
        ]
    chat = service.chat.stats
    rate = chat.tokens / chat.busy_seconds if chat.busy_seconds else 0.0
    lines += [
        f"appliance_inference_completion_tokens_total {chat.tokens}",
        f"appliance_inference_tokens_per_second {rate:.2f}",
    ]
    header = [
        "# HELP appliance_inference_queue_length Requests waiting for the model.",
        "# TYPE appliance_inference_queue_length gauge",
    ]
    chat_engine = service.engine.chat
    m = chat_engine.metrics
    lines += [
        f"appliance_inference_slots {chat_engine.slots}",
        f"appliance_inference_slots_in_use {chat_engine.slots_in_use}",
        f"appliance_inference_batch_steps_total {m.steps}",
        f"appliance_inference_batch_step_seconds_total {m.step_seconds:.6f}",
        f"appliance_inference_batch_decode_seconds_total {m.decode_seconds:.6f}",
        f"appliance_inference_batch_overhead_seconds_total {m.step_seconds - m.decode_seconds:.6f}",
        f"appliance_inference_batch_tokens_total {m.batch_tokens}",
        f"appliance_inference_batch_sequences_total {m.batch_sequences}",
        f"appliance_inference_prompt_tokens_evaluated_total {m.prompt_tokens}",
        f"appliance_inference_prefix_cache_lookups_total {m.prefix_lookups}",
        f"appliance_inference_prefix_cache_hits_total {m.prefix_hits}",
        f"appliance_inference_prefix_cache_hit_rate {m.prefix_hit_rate:.4f}",
        f"appliance_inference_prefix_cache_tokens_reused_total {m.prefix_tokens_reused}",
        f"appliance_inference_prefix_cache_entries {chat_engine.prefix_entries}",
        f"appliance_inference_kv_full_total {m.kv_full}",
        f"appliance_inference_kv_waits_total {m.kv_waits}",
        f"appliance_inference_decode_errors_total {m.decode_errors}",
    ]
    return "\n".join(header + lines) + "\n"


def _batching(service: InferenceService) -> dict[str, Any]:
    """The chat engine's slots and recent step times."""
    chat = service.engine.chat
    m = chat.metrics
    return {
        "slots": chat.slots,
        "slots_in_use": chat.slots_in_use,
        "prompt_chunk_tokens": chat.chunk,
        "steps": m.steps,
        **m.averages(),
        "prefix_cache_entries": chat.prefix_entries,
        "prefix_cache_hit_rate": round(m.prefix_hit_rate, 4),
        "kv_full": m.kv_full,
        "kv_waits": m.kv_waits,
        "decode_errors": m.decode_errors,
    }


def run_server(settings: Settings) -> None:
    """Load the models and serve until SIGINT/SIGTERM (``appliance inference``)."""
    import uvicorn

    from appliance.inference import selftest

    try:
        extra_bufts = selftest.choose_repack(settings)
    except selftest.SelfTestCrashed as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(2) from None
    engine = load_engine(settings, extra_bufts=extra_bufts)
    info = engine.info
    if info.gpu_offload_supported:
        log.info(
            "llama.cpp has GPU support: %d of %d layers offloaded (%s)",
            info.gpu_layers,
            info.model_layers,
            info.device,
        )
    else:
        log.warning("llama.cpp was built WITHOUT GPU support: the model runs on the CPU")
    log.info(
        "chat model %s (context %d, %d threads), embedding model %s",
        info.chat_model,
        info.n_ctx,
        info.n_threads,
        info.embedding_model,
    )
    app = create_inference_app(settings, engine)
    uvicorn.run(
        app,
        host=settings.inference.host,
        port=settings.inference.port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
