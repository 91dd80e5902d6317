"""OpenAI's request bodies as msgspec types, shared by ``/v1`` and the inference service.

Every field of OpenAI's chat completions request is declared here. ``check_chat`` either
accepts a field (and ``chat_request`` turns it into what the engine does) or refuses it
with an ``InvalidParam`` naming the field and saying why; nothing is silently dropped.
Fields that no OpenAI request has (other vendors' extensions) are ignored, as msgspec
does by default; docs/api.md lists the common ones.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

import msgspec
import numpy as np

from appliance.errors import InvalidInput

MAX_MESSAGES = 1000
MAX_TEXT_CHARS = 1_000_000
MAX_STOP = 4
MAX_TOOLS = 128
MAX_EMBED_INPUTS = 2048
ROLES = ("system", "developer", "user", "assistant", "tool")


class InvalidParam(InvalidInput):
    """A 400 naming the request field (``param``) and, where OpenAI has one, its ``code``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class Part(msgspec.Struct):
    type: str
    text: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(msgspec.Struct):
    role: str
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: Any = None
    function_call: Any = None


class FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDef
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class JsonSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Common(msgspec.Struct, kw_only=True):
    """The fields a legacy completion shares with a chat completion."""

    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None


class ChatCompletionRequest(Common, kw_only=True):
    """OpenAI's ``POST /v1/chat/completions`` body (every field of its reference)."""

    messages: list[Message]
    audio: Any = None
    function_call: Any = None
    functions: Any = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None
    prediction: Any = None
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = None
    verbosity: str | None = None
    web_search_options: Any = None


class CompletionRequest(Common, kw_only=True):
    """OpenAI's legacy ``POST /v1/completions`` body."""

    prompt: str | list[Any]
    best_of: int | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None


def completion_prompt(request: CompletionRequest) -> str:
    """The one text prompt of a legacy completion; a 400 naming what is not supported."""
    refused = {
        "echo": "echoing the prompt is not supported",
        "suffix": "insertion (suffix) is not supported",
        "logprobs": "log probabilities are returned by chat completions only",
    }
    for name, reason in refused.items():
        if getattr(request, name):
            raise InvalidParam(f"'{name}' is not supported: {reason}.", name)
    if request.best_of not in (None, 1, request.n):
        raise InvalidParam("'best_of' other than 'n' is not supported.", "best_of")
    prompt = request.prompt
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidParam(
            "'prompt' must be one non-empty string (token ids and several prompts are not "
            "supported; use 'n' for several answers).",
            "prompt",
        )
    if len(prompt) > MAX_TEXT_CHARS:
        raise InvalidParam("'prompt' is too long.", "prompt")
    return prompt


class EmbeddingRequest(msgspec.Struct):
    """OpenAI's ``POST /v1/embeddings`` body."""

    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


#: The most alternatives ``top_logprobs`` may ask for per token (OpenAI's limit).
MAX_TOP_LOGPROBS = 20

#: Numeric fields' bounds (inclusive).
RANGES = {
    "top_logprobs": (0, MAX_TOP_LOGPROBS, "an integer"),
    "presence_penalty": (-2, 2, "a number"),
    "frequency_penalty": (-2, 2, "a number"),
    "temperature": (0, 2, "a number"),
    "top_p": (0, 1, "a number"),
    "seed": (0, 2**31 - 1, "an integer"),
}

#: Fields refused whenever they are set (not null), and why.
REFUSED = {
    "audio": "audio output is not supported: the models here produce text only",
    "functions": "the deprecated 'functions' is not supported; send 'tools' instead",
    "function_call": "the deprecated 'function_call' is not supported; use 'tool_choice'",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not available: the appliance does not reach the internet",
    "reasoning_effort": "the models here are not reasoning models",
    "verbosity": "'verbosity' is not supported; say how long the answer should be instead",
}


def decode(body: Any, kind: type[msgspec.Struct]) -> Any:
    """``body`` (parsed JSON) as ``kind``; a 400 naming the wrong field otherwise."""
    if not isinstance(body, dict):
        raise InvalidParam("The request body must be a JSON object.")
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        text, _, at = str(exc).partition(" - at `$")
        path = at.rstrip("`").lstrip(".")
        missing = re.fullmatch(r"Object missing required field `(.+)`", text)
        if missing:
            param = f"{path}.{missing.group(1)}" if path else missing.group(1)
            raise InvalidParam(f"'{param}' is required.", param) from None
        text = text.replace("`", "")
        raise InvalidParam(f"'{path}': {text[0].lower()}{text[1:]}.", path or None) from None


def text_of(content: str | list[Part] | None, where: str) -> str:
    """A message's text: its parts joined; a 400 naming a part that is not text."""
    if content is None:
        return ""
    if isinstance(content, str):
        text = content
    else:
        pieces = []
        for index, part in enumerate(content):
            if part.type != "text":
                raise InvalidParam(
                    f"{where}[{index}] is a '{part.type}' part; the model here reads text "
                    "only (send 'text' parts).",
                    f"{where}[{index}].type",
                )
            if part.text is None:
                raise InvalidParam(f"{where}[{index}] needs a 'text' string.", f"{where}[{index}]")
            pieces.append(part.text)
        text = "\n".join(pieces)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidParam(f"{where} is too long.", where)
    return text


def clean_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as the chat template takes them (roles checked, content text).

    Indexes in errors are those of the client's list.
    """
    if not messages:
        raise InvalidParam("'messages' must be a non-empty list.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidParam(f"'messages' may hold at most {MAX_MESSAGES} messages.", "messages")
    clean = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role not in ROLES:
            raise InvalidParam(f"{where}.role must be one of {', '.join(ROLES)}.", f"{where}.role")
        if message.audio is not None or message.function_call is not None:
            raise InvalidParam(
                f"{where}: 'audio' and 'function_call' are not supported; use 'tool_calls'.",
                where,
            )
        out: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text_of(message.content, f"{where}.content"),
        }
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise InvalidParam(f"{where}.content is required.", f"{where}.content")
        if message.name:
            out["name"] = message.name
        if message.tool_calls:
            if message.role != "assistant":
                raise InvalidParam(
                    f"{where}: only assistant messages have 'tool_calls'.", f"{where}.tool_calls"
                )
            out["tool_calls"] = msgspec.to_builtins(message.tool_calls)
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidParam(
                    f"{where}: a tool message needs 'tool_call_id'.", f"{where}.tool_call_id"
                )
            out["tool_call_id"] = message.tool_call_id
        clean.append(out)
    return clean


def check_chat(request: ChatCompletionRequest, *, max_n: int) -> None:
    """Refuse what is not supported, naming the field and why."""
    for name, reason in REFUSED.items():
        value = getattr(request, name)
        if value is not None and value is not False:
            raise InvalidParam(f"'{name}' is not supported: {reason}.", name)
    if request.modalities not in (None, ["text"]):
        raise InvalidParam("Only the 'text' modality is supported.", "modalities")
    if request.store:
        raise InvalidParam(
            "'store' is not supported: completions are not kept for evals or distillation; "
            'to keep an exchange as a conversation, send "appliance": {"store": true}.',
            "store",
        )
    if request.service_tier not in (None, "auto", "default"):
        raise InvalidParam("'service_tier' must be 'auto' or 'default': there is one tier.")
    if request.metadata is not None and (
        len(request.metadata) > 16
        or any(len(k) > 64 or len(v) > 512 for k, v in request.metadata.items())
    ):
        raise InvalidParam("'metadata' may hold 16 pairs (keys ≤ 64, values ≤ 512).", "metadata")
    for name, (low, high, kind) in RANGES.items():
        value = getattr(request, name)
        if value is not None and not low <= value <= high:
            raise InvalidParam(f"'{name}' must be {kind} from {low} to {high}.", name)
    if request.top_logprobs and not request.logprobs:
        raise InvalidParam("'logprobs' must be true when 'top_logprobs' is set.", "logprobs")
    n = 1 if request.n is None else request.n
    if not 1 <= n <= max_n:
        raise InvalidParam(f"'n' must be from 1 to {max_n} (inference.max_choices).", "n")
    stop = stops(request)
    if len(stop) > MAX_STOP or not all(0 < len(s) <= 64 for s in stop):
        raise InvalidParam(
            "'stop' must be a string or a list of up to 4 strings (≤ 64 chars).", "stop"
        )
    for token, bias in (request.logit_bias or {}).items():
        if not token.isdigit() or not -100 <= bias <= 100:
            raise InvalidParam(
                "'logit_bias' maps token ids (strings of digits) to numbers from -100 to 100.",
                "logit_bias",
            )
    _check_tools(request)


def _check_tools(request: ChatCompletionRequest) -> None:
    tools = request.tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidParam(f"'tools' may hold at most {MAX_TOOLS} functions.", "tools")
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidParam("Each tool needs a different name.", "tools")
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidParam(
            f"'tool_choice' names '{choice.function.name}', which is not in 'tools'.",
            "tool_choice",
        )
    if choice == "required" and not tools:
        raise InvalidParam("'tool_choice' is 'required' but there are no 'tools'.", "tool_choice")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidParam("'response_format' json_schema needs 'json_schema'.", "response_format")
    if fmt is not None and fmt.type != "text" and tools and choice != "none":
        raise InvalidParam(
            "'response_format' and 'tools' cannot both constrain one answer here; "
            "set 'tool_choice' to 'none' or leave out 'response_format'.",
            "response_format",
        )


def stops(request: ChatCompletionRequest) -> list[str]:
    stop = request.stop or []
    return [stop] if isinstance(stop, str) else list(stop)


def max_tokens_of(request: ChatCompletionRequest) -> int | None:
    if request.max_completion_tokens is not None:
        return request.max_completion_tokens
    return request.max_tokens


def embedding_texts(request: EmbeddingRequest) -> list[str]:
    """The texts to embed; token-ID input is refused (see docs/api.md)."""
    texts: Any = request.input
    if isinstance(texts, str):
        texts = [texts]
    if not texts or len(texts) > MAX_EMBED_INPUTS:
        raise InvalidParam(f"'input' must hold 1 to {MAX_EMBED_INPUTS} items.", "input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidParam(
            "'input' as token ids is not supported: clients tokenize with OpenAI's tokenizer "
            "(tiktoken), whose ids mean other words in this model; send the text (in "
            "langchain-openai: check_embedding_ctx_length=False).",
            "input",
        )
    for index, text in enumerate(texts):
        if not text or len(text) > MAX_TEXT_CHARS:
            raise InvalidParam(f"input[{index}] must be a non-empty string.", "input")
    return texts


def embedding_data(vectors: list[list[float]], request: EmbeddingRequest) -> list[dict[str, Any]]:
    """OpenAI's ``data``: ``dimensions`` kept (renormalised), floats or base64."""
    out = []
    for index, vector in enumerate(vectors):
        array = np.asarray(vector, dtype="<f4")
        if request.dimensions is not None:
            if not 1 <= request.dimensions <= len(array):
                raise InvalidParam(
                    f"'dimensions' must be from 1 to {len(array)} for this model.", "dimensions"
                )
            array = array[: request.dimensions]
            norm = float(np.linalg.norm(array))
            array = (array / norm if norm else array).astype("<f4")
        if request.encoding_format == "base64":
            value: Any = base64.b64encode(array.tobytes()).decode()
        else:
            value = array.tolist()
        out.append({"object": "embedding", "index": index, "embedding": value})
    return out
