"""The inference service's chat and embeddings requests and answers in OpenAI's shapes.

``parse_chat`` turns a request (checked with appliance/inference/openai_schema.py) into
``ChatRequest``: one per choice (``n``), each with its own seed when one was given.
``collect`` and ``stream`` gather the choices' events into a completion or its chunks;
tool calls are parsed from each choice's text when it ends, so with ``tools`` a choice's
text or calls arrive in one delta after its generation.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from appliance.config import Settings
from appliance.inference import openai_schema as schema
from appliance.inference import structured
from appliance.inference.base import Delta, Finish
from appliance.inference.sampling import GenerationParams
from appliance.inference.scheduler import DONE, Failed, Job

#: OpenAI's error codes for refusals (its SDKs retry 429 and 503 after ``Retry-After``).
CODES = {429: "rate_limit_exceeded", 503: "service_unavailable"}
KINDS = {429: "rate_limit_error", 503: "server_busy"}


def error_body(
    status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's ``error`` object; refusals get their code unless one is given."""
    return {"message": message, "type": kind, "param": param, "code": code or CODES.get(status)}


def failed_chunk(event: Failed) -> str:
    """A stream's error event: the status and Retry-After the request would have got."""
    error = error_body(event.status, event.message, KINDS.get(event.status, "server_error"))
    error.update(status=event.status, retry_after=event.retry_after)
    return f"data: {json.dumps({'error': error})}\n\n"


@dataclass(frozen=True)
class ChatRequest:
    #: The chat's messages, or a legacy completion's prompt (no chat template).
    messages: list[dict[str, Any]] | str
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    tools: list[dict[str, Any]] | None = None
    #: A tool call is forced (``required`` or a named function): the answer is one call.
    forced: bool = False

    def choices(self) -> list[ChatRequest]:
        """One request per choice; seeded choices get consecutive seeds."""
        seed = self.params.seed
        return [
            replace(self, params=replace(self.params, seed=None if seed is None else seed + i))
            for i in range(self.n)
        ]


def check_model(requested: Any, loaded: str) -> None:
    if requested is not None and requested != loaded:
        raise schema.InvalidParam(
            f"The model '{requested}' is not served here; use '{loaded}'.",
            "model",
            "model_not_found",
        )


def parse_chat(body: Any, settings: Settings, model_id: str, n_vocab: int) -> ChatRequest:
    """Validate a chat completion request; raises InvalidParam naming the bad field."""
    request = schema.decode(body, schema.ChatCompletionRequest)
    messages = schema.clean_messages(request.messages)
    return _checked(request, structured.template_messages(messages), settings, model_id, n_vocab)


def parse_completion(body: Any, settings: Settings, model_id: str, n_vocab: int) -> ChatRequest:
    """A legacy completion (``prompt`` in, text out, no chat template) as a ChatRequest."""
    legacy = schema.decode(body, schema.CompletionRequest)
    prompt = schema.completion_prompt(legacy)
    shared = {name: getattr(legacy, name) for name in schema.Common.__struct_fields__}
    if shared["max_tokens"] is None:
        shared["max_tokens"] = 16  # OpenAI's default for this endpoint
    request = schema.ChatCompletionRequest(messages=[], **shared)
    return _checked(request, prompt, settings, model_id, n_vocab)


def _checked(
    request: schema.ChatCompletionRequest,
    messages: list[dict[str, Any]] | str,
    settings: Settings,
    model_id: str,
    n_vocab: int,
) -> ChatRequest:
    check_model(request.model, model_id)
    cfg = settings.inference
    schema.check_chat(request, max_n=cfg.max_choices)
    cap = cfg.max_tokens
    max_tokens = schema.max_tokens_of(request)
    if max_tokens is not None and not 1 <= max_tokens <= cap:
        raise schema.InvalidParam(f"'max_tokens' must be an integer from 1 to {cap}.", "max_tokens")
    bias = tuple((int(k), v) for k, v in (request.logit_bias or {}).items())
    if any(token >= n_vocab for token, _ in bias):
        raise schema.InvalidParam(f"'logit_bias': token ids go up to {n_vocab - 1}.", "logit_bias")
    top_p = 0.95 if request.top_p is None else request.top_p
    params = GenerationParams(
        max_tokens=cap if max_tokens is None else max_tokens,
        temperature=0.7 if request.temperature is None else request.temperature,
        top_p=top_p if top_p > 0 else 1e-6,
        seed=request.seed,
        stop=tuple(schema.stops(request)),
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=bias,
        grammar=structured.grammar(request),
        top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
    )
    options = request.stream_options
    return ChatRequest(
        messages=messages,
        params=params,
        stream=bool(request.stream),
        include_usage=bool(options and options.include_usage),
        n=request.n or 1,
        tools=structured.tool_dicts(request),
        forced=bool(structured.forced_tools(request)),
    )


@dataclass
class Choice:
    """One choice's text and end, as its job's events arrive."""

    index: int
    parts: list[str]
    finish: Finish | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        self.logprobs.extend(delta.logprobs)

    def message(self, chat: ChatRequest) -> tuple[dict[str, Any], str]:
        """The assistant message and the finish reason."""
        text = "".join(self.parts)
        reason = self.finish.reason if self.finish else "stop"
        if chat.tools:
            names = [t["function"]["name"] for t in chat.tools]
            text, calls = structured.tool_calls(text, names, chat.forced)
            if calls:
                calls = calls[:1] if chat.forced else calls
                return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, reason


def usage(finishes: list[Finish]) -> dict[str, Any]:
    """Usage over the choices: the prompt once (it is shared), completions summed."""
    prompt = finishes[0].prompt_tokens if finishes else 0
    completion = sum(f.completion_tokens for f in finishes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": finishes[0].cached_tokens if finishes else 0},
    }


async def merged(jobs: list[Job]) -> AsyncIterator[tuple[int, Any]]:
    """The events of several jobs as they come, tagged with the job's index."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, job: Job) -> None:
        while True:
            event = await job.events.get()
            await queue.put((index, event))
            if event is DONE:
                return

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        running = len(jobs)
        while running:
            index, event = await queue.get()
            if event is DONE:
                running -= 1
            elif not jobs[index].cancelled.is_set():
                yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _logprobs(chat: ChatRequest, entries: Any) -> dict[str, Any] | None:
    """A choice's (or chunk's) ``logprobs``: null unless they were asked for."""
    if chat.params.top_logprobs is None:
        return None
    return {"content": list(entries), "refusal": None}


def completion(chat: ChatRequest, choices: list[Choice], model_id: str) -> dict[str, Any]:
    """The non-streaming answer (``text_completion`` for a legacy prompt)."""
    legacy = isinstance(chat.messages, str)
    out = []
    for choice in choices:
        message, reason = choice.message(chat)
        body = {"text": message["content"]} if legacy else {"message": message}
        logprobs = _logprobs(chat, choice.logprobs)
        out.append({"index": choice.index, **body, "finish_reason": reason, "logprobs": logprobs})
    head = _head(chat, model_id, "text_completion" if legacy else "chat.completion")
    return {**head, "choices": out, "usage": usage([c.finish for c in choices if c.finish])}


def _head(chat: ChatRequest, model_id: str, kind: str) -> dict[str, Any]:
    """A completion's (or its chunks') ``id``, ``object``, ``created`` and ``model``."""
    prefix = "cmpl" if isinstance(chat.messages, str) else "chatcmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model_id,
    }


async def stream(chat: ChatRequest, jobs: list[Job], model_id: str) -> AsyncIterator[str]:
    """The completion's SSE chunks (OpenAI's), ending with ``[DONE]``."""
    legacy = isinstance(chat.messages, str)
    head = _head(chat, model_id, "text_completion" if legacy else "chat.completion.chunk")

    def chunk(choices: list[dict[str, Any]], **usage_: Any) -> str:
        body = {**head, "choices": choices, **usage_}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def piece(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = ()
    ) -> str:
        if legacy:
            text = delta.get("content") or ""
            return chunk(
                [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]
            )
        body = {"index": index, "delta": delta, "finish_reason": finish}
        if logprobs:
            body["logprobs"] = _logprobs(chat, logprobs)
        return chunk([body])

    choices = [Choice(i, []) for i in range(len(jobs))]
    if not legacy:
        for choice in choices:
            yield piece(choice.index, {"role": "assistant", "content": ""})
    async for index, event in merged(jobs):
        choice = choices[index]
        if isinstance(event, Delta):
            choice.add(event)
            if not chat.tools:
                yield piece(index, {"content": event.text}, logprobs=event.logprobs)
        elif isinstance(event, Finish):
            choice.finish = event
            message, reason = choice.message(chat)
            if chat.tools:
                delta: dict[str, Any] = {"content": message["content"]}
                if message.get("tool_calls"):
                    delta["tool_calls"] = [
                        {"index": i, **call} for i, call in enumerate(message["tool_calls"])
                    ]
                yield piece(index, delta, logprobs=choice.logprobs)
            yield piece(index, {}, reason)
        elif isinstance(event, Failed):
            yield failed_chunk(event)
    if chat.include_usage:
        yield chunk([], usage=usage([c.finish for c in choices if c.finish]))
    yield "data: [DONE]\n\n"


def parse_embeddings(body: Any, model_id: str) -> schema.EmbeddingRequest:
    request = schema.decode(body, schema.EmbeddingRequest)
    check_model(request.model, model_id)
    texts = schema.embedding_texts(request)
    return msgspec.structs.replace(request, input=texts)
