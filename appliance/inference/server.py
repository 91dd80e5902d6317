"""The inference service: a local HTTP API shaped like OpenAI's, in front of the engine.

Listens on loopback by default; every ``/v1`` call needs the internal bearer key from
``DATA_DIR/secrets/inference_key``. The account id and priority come in headers set by
``InferenceClient``; the web process strips them from anything users send.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, MediaType, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream

import appliance
from appliance import vault
from appliance.config import Settings
from appliance.errors import InvalidInput, Unavailable
from appliance.inference import chat_api, gpu, rerank
from appliance.inference import openai_schema as schema
from appliance.inference.base import ContextOverflow, Delta, Finish, gpu_backends
from appliance.inference.chat_api import ChatRequest
from appliance.inference.client import ACCOUNT_HEADER, PRIORITY_HEADER
from appliance.inference.engine import Engine, load_engine
from appliance.inference.scheduler import AccountBusy, Failed, Job, Scheduler

log = logging.getLogger("appliance.inference")
#: What /healthz says of the loaded engine (``EngineInfo``'s fields).
HEALTH_INFO = (
    *("chat_model", "embedding_model", "rerank_model", "n_ctx", "device"),
    *("gpu_offload_supported", "gpu_layers", "model_layers", "cpu_repack"),
)
#: The ``Stats`` counters /metrics reports as ``requests_total{status=...}``.
OUTCOMES = ("completed", "cancelled", "failed", "rejected_full", "rejected_account")


def api_error(
    status: int, message: str, kind: str, *, retry_after: int | None = None, **fields: Any
) -> Response:
    """OpenAI's error envelope (``fields``: its ``param`` and ``code``); a refusal (429,
    503) says when to retry."""
    headers = {"Retry-After": str(retry_after or 2)} if status in chat_api.CODES else {}
    return Response(
        {"error": chat_api.error_body(status, message, kind, **fields)},
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def failed_error(event: Failed) -> Response:
    kind = chat_api.KINDS.get(event.status, "invalid_request_error")
    return api_error(event.status, event.message, kind, retry_after=event.retry_after)


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

    def require_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        key = service.key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key):
            raise NotAuthorizedException("Missing or wrong inference key.")

    @post(["/v1/chat/completions", "/v1/completions"], status_code=200)
    async def completions(request: Request) -> Response | Stream:
        """A chat completion, or a legacy one (the prompt as it is, without the template)."""
        legacy = request.url.path.endswith("/v1/completions")
        parse = chat_api.parse_completion if legacy else chat_api.parse_chat
        n_vocab = engine.chat.llama.n_vocab()
        chat = parse(await read_json(request), settings, model_id, n_vocab)
        jobs = [service.job(request, choice) for choice in chat.choices()]
        for job in jobs:
            await service.chat.enter(job)
        if chat.stream:
            return Stream(
                _sse(service, chat, jobs, model_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        choices = [chat_api.Choice(i, []) for i in range(len(jobs))]
        async for index, event in _events_until_disconnect(service.chat, jobs, request):
            if isinstance(event, Delta):
                choices[index].add(event)
            elif isinstance(event, Finish):
                choices[index].finish = event
            elif isinstance(event, Failed):
                for job in jobs:
                    service.chat.cancel(job)
                return failed_error(event)
        if any(choice.finish is None for choice in choices):  # the client went away
            return api_error(499, "Client closed the request.", "cancelled")
        return Response(chat_api.completion(chat, choices, model_id))

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request) -> Response:
        parsed = chat_api.parse_embeddings(await read_json(request), embed_id or "")
        result = await _encoded(service, request, parsed.input)
        if isinstance(result, Response):
            return result
        vectors, tokens = result
        return Response(
            {
                "object": "list",
                "data": schema.embedding_data(vectors, parsed),
                "model": embed_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @post("/v1/rerank", status_code=200)
    async def rerank_documents(request: Request) -> Response:
        """Relevance of each document to the query, best first (llama-server's shape)."""
        if engine.rerank is None:
            return api_error(
                501, "No reranker is loaded (inference.rerank_model).", "not_implemented"
            )
        rerank_id = engine.rerank.model.id
        parsed = rerank.parse_rerank(await read_json(request), rerank_id)
        result = await _encoded(service, request, parsed)
        if isinstance(result, Response):
            return result
        scores, tokens = result
        return Response(rerank.response(parsed, scores, tokens, rerank_id))

    @post("/tokenize", status_code=200)
    async def tokenize(request: Request) -> Response:
        """Token counts of texts in the embedding model's tokenizer (for chunk sizing)."""
        body = await read_json(request)
        texts = body.get("input") if isinstance(body, dict) else None
        if (
            not isinstance(texts, list)
            or len(texts) > 100_000
            or not all(isinstance(t, str) and len(t) <= schema.MAX_TEXT_CHARS for t in texts)
        ):
            raise InvalidInput("'input' must be a list of strings.")
        chat = body.get("model") == "chat"
        tokenizer = engine.chat if chat else engine.embedding
        if tokenizer is None:
            raise InvalidInput("No embedding model is loaded.")
        counts = await asyncio.to_thread(tokenizer.count_tokens, texts)
        return Response({"model": model_id if chat else embed_id, "counts": counts})

    @get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        created = int(service.started)
        ids = [i for i in (model_id, embed_id, engine.info.rerank_model) if i]
        data = [
            {"id": i, "object": "model", "created": created, "owned_by": "appliance"} for i in ids
        ]
        return {"object": "list", "data": data}

    @get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": appliance.__version__,
            **{name: getattr(engine.info, name) for name in HEALTH_INFO},
            "queue": service.chat.waiting + service.embeddings.waiting,
            "gpus": await asyncio.to_thread(gpu.memory),
            "batching": _batching(service),
        }

    @get("/metrics", media_type=MediaType.TEXT)
    async def metrics() -> str:
        return _prometheus(service)

    def invalid(request: Request, exc: InvalidInput) -> Response:
        param, code = getattr(exc, "param", None), getattr(exc, "code", None)
        if isinstance(exc, ContextOverflow):
            param, code = "messages", "context_length_exceeded"
        return api_error(400, str(exc), "invalid_request_error", param=param, code=code)

    def refused(request: Request, exc: Unavailable | AccountBusy) -> Response:
        status = 429 if isinstance(exc, AccountBusy) else 503
        return api_error(status, str(exc), chat_api.KINDS[status], retry_after=exc.retry_after)

    def unauthorized(request: Request, exc: NotAuthorizedException) -> Response:
        return api_error(401, str(exc.detail), "authentication_error", code="invalid_api_key")

    def http_error(request: Request, exc: HTTPException) -> Response:
        return api_error(exc.status_code, str(exc.detail), "invalid_request_error")

    app = Litestar(
        route_handlers=[
            Router(
                "/",
                guards=[require_key],
                route_handlers=[completions, embeddings, rerank_documents, tokenize, list_models],
            ),
            healthz,
            metrics,
        ],
        on_startup=[service.chat.start, service.embeddings.start],
        # Hooks without parameters: Litestar passes the app to one that takes any.
        on_shutdown=[service.chat.stop, service.embeddings.stop],
        exception_handlers={
            InvalidInput: invalid,
            Unavailable: refused,
            AccountBusy: refused,
            NotAuthorizedException: unauthorized,
            HTTPException: http_error,
        },
        request_max_body_size=16 * 1024 * 1024,
        openapi_config=None,
        logging_config=None,  # the CLI configured JSON lines (privacy/logs.py); keep them
    )
    app.state.service = service
    return app


async def _encoded(service: InferenceService, request: Request, payload: Any) -> Any:
    """The embeddings queue's answer to ``payload`` (vectors or scores, and the tokens), or
    the error response: the job failed, or the client went away (499)."""
    job = service.job(request, payload)
    await service.embeddings.enter(job)
    result = None
    async for _, event in _events_until_disconnect(service.embeddings, [job], request):
        if isinstance(event, Failed):
            return failed_error(event)
        result = event
    if result is None:
        return api_error(499, "Client closed the request.", "cancelled")
    return result


async def _events_until_disconnect(
    scheduler: Scheduler, jobs: list[Job], request: Request
) -> AsyncIterator[tuple[int, Any]]:
    """The jobs' events (with the job's index); cancels them if the client disconnects."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for job in jobs:
                    scheduler.cancel(job)
                return

    watcher = asyncio.create_task(watch())
    try:
        async for index, event in chat_api.merged(jobs):
            yield index, event
    finally:
        watcher.cancel()


async def _sse(
    service: InferenceService, chat: ChatRequest, jobs: list[Job], model_id: str
) -> AsyncIterator[str]:
    try:
        async for line in chat_api.stream(chat, jobs, model_id):
            yield line
    finally:
        # If the client went away (Litestar cancels the stream), this frees the slots now;
        # after the last chunk there is nothing left to stop.
        for job in jobs:
            service.chat.cancel(job)


def _prometheus(service: InferenceService) -> str:
    lines = [
        "# HELP appliance_inference_queue_length Requests waiting for the model.",
        "# TYPE appliance_inference_queue_length gauge",
    ]
    for scheduler in (service.chat, service.embeddings):
        s, label = scheduler.stats, f'kind="{scheduler.name}"'
        total = f"appliance_inference_requests_total{{{label},status="
        lines += [
            f"appliance_inference_queue_length{{{label}}} {scheduler.waiting}",
            f"appliance_inference_running{{{label}}} {len(scheduler.active)}",
            *(f'{total}"{status}"}} {getattr(s, status)}' for status in OUTCOMES),
            f"appliance_inference_account_waits_total{{{label}}} {s.held}",
            f"appliance_inference_busy_seconds_total{{{label}}} {s.busy_seconds:.3f}",
        ]
    chat, engine = service.chat.stats, service.engine.chat
    m = engine.metrics
    values = {
        "completion_tokens_total": chat.tokens,
        "tokens_per_second": f"{chat.tokens / chat.busy_seconds if chat.busy_seconds else 0:.2f}",
        "slots": engine.slots,
        "slots_in_use": engine.slots_in_use,
        "batch_steps_total": m.steps,
        "batch_step_seconds_total": f"{m.step_seconds:.6f}",
        "batch_decode_seconds_total": f"{m.decode_seconds:.6f}",
        "batch_overhead_seconds_total": f"{m.step_seconds - m.decode_seconds:.6f}",
        "batch_tokens_total": m.batch_tokens,
        "batch_sequences_total": m.batch_sequences,
        "prompt_tokens_evaluated_total": m.prompt_tokens,
        "prefix_cache_lookups_total": m.prefix_lookups,
        "prefix_cache_hits_total": m.prefix_hits,
        "prefix_cache_hit_rate": f"{m.prefix_hit_rate:.4f}",
        "prefix_cache_tokens_reused_total": m.prefix_tokens_reused,
        "prefix_cache_entries": engine.prefix_entries,
        "kv_full_total": m.kv_full,
        "kv_waits_total": m.kv_waits,
        "decode_errors_total": m.decode_errors,
    }
    lines += [f"appliance_inference_{name} {value}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def _batching(service: InferenceService) -> dict[str, Any]:
    chat = service.engine.chat
    m = chat.metrics
    return {
        "slots": chat.slots,
        "slots_in_use": chat.slots_in_use,
        "prompt_chunk_tokens": chat.chunk,
        "overlap": chat.overlap,
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
    elif built := gpu_backends():  # why is in llama.cpp's own error just before
        log.warning(
            "llama.cpp was built for %s but found no GPU: the model runs on the CPU",
            ", ".join(built),
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
