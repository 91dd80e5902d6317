"""OpenAI's Responses API (``POST /v1/responses``), stateless: a request becomes a chat
completion request, and the completion (or its chunks) becomes a response (or its events).

Nothing is stored, so ``previous_response_id``, ``conversation``, ``background`` and
``store: true`` are refused with a 400 naming them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from appliance.inference.openai_schema import InvalidParam
from appliance.web.sse import sse

#: Fields refused whenever set, and why.
REFUSED = {
    "previous_response_id": "responses are not stored here; send the whole conversation",
    "conversation": "responses are not stored here; send the whole conversation",
    "background": "background responses are not supported",
    "prompt": "stored prompt templates are not supported",
    "reasoning": "the models here are not reasoning models",
    "top_logprobs": "log probabilities are not returned by this service yet",
}
#: Fields passed on to the chat completion unchanged.
PASSED = ("model", "temperature", "top_p", "parallel_tool_calls", "metadata", "user", "stream")


def chat_body(body: Any) -> dict[str, Any]:
    """The chat completion request for a Responses request."""
    if not isinstance(body, dict):
        raise InvalidParam("The request body must be a JSON object.")
    for name, reason in REFUSED.items():
        if body.get(name) not in (None, False, {}):
            raise InvalidParam(f"'{name}' is not supported: {reason}.", name)
    if body.get("store"):
        raise InvalidParam(
            "'store' is not supported: responses are not kept here; set it to false.", "store"
        )
    if body.get("include"):
        raise InvalidParam("'include' is not supported: there is nothing extra to add.", "include")
    chat: dict[str, Any] = {k: body[k] for k in PASSED if body.get(k) is not None}
    messages = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += _messages(body.get("input"))
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    tools = body.get("tools") or []
    if tools:
        chat["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = ((body.get("text") or {}).get("format")) or {"type": "text"}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {k: fmt.get(k) for k in ("name", "schema", "strict", "description")},
        }
    elif fmt.get("type") in ("json_object", "text"):
        chat["response_format"] = {"type": fmt["type"]}
    else:
        raise InvalidParam("'text.format.type' must be text, json_object or json_schema.", "text")
    return chat


def _tool(tool: Any, index: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise InvalidParam(
            f"tools[{index}]: only function tools are supported here, not '{kind}'.",
            f"tools[{index}].type",
        )
    function = {k: tool.get(k) for k in ("name", "description", "parameters", "strict")}
    return {"type": "function", "function": function}


def _messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidParam("'input' must be a string or a non-empty list of items.", "input")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            out.append({"role": item.get("role"), "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        else:
            raise InvalidParam(
                f"{where}: items of type '{kind}' are not supported here.", f"{where}.type"
            )
    return out


def _content(content: Any, where: str) -> Any:
    if not isinstance(content, list):
        return content
    parts = []
    for index, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text")})
        else:
            kind = part.get("type") if isinstance(part, dict) else None
            raise InvalidParam(
                f"{where}.content[{index}] is a '{kind}' part; the model here reads text only.",
                f"{where}.content[{index}].type",
            )
    return parts


def response(body: dict[str, Any], answer: dict[str, Any], response_id: str) -> dict[str, Any]:
    """The Responses object for a chat completion ``answer``."""
    choice = answer["choices"][0]
    text, calls = choice["message"].get("content") or "", choice["message"].get("tool_calls") or []
    finish, usage, model = choice.get("finish_reason"), answer.get("usage"), answer.get("model")
    return _response(body, response_id, text, calls, finish, usage, model)


def _response(body, response_id, text, calls, finish, usage, model) -> dict[str, Any]:
    output: list[dict[str, Any]] = [_function_call(call) for call in calls]
    if text or not calls:
        output.insert(0, _message(response_id, text))
    incomplete = finish == "length"
    usage = usage or {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "instructions": body.get("instructions"),
        "output": output,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
        "store": False,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "input_tokens_details": {
                "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            },
            "output_tokens": usage.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.get("total_tokens", 0),
        },
    }


def _message(response_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{response_id[5:]}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _function_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{call['id'][5:]}",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": "completed",
    }


def new_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


async def events(
    body: dict[str, Any], chunks: AsyncIterator[dict[str, Any]], response_id: str, model: str
) -> AsyncIterator[str]:
    """The Responses streaming events for a chat completion's chunks."""
    sequence = 0

    def event(kind: str, **data: Any) -> str:
        nonlocal sequence
        sequence += 1
        payload = {"type": kind, "sequence_number": sequence, **data}
        return sse(payload, kind)

    started = _response(body, response_id, "", [], None, None, model)
    started.update(status="in_progress", output=[])
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    # Where the message's text goes: its only content part, the response's first item.
    at_text = {"item_id": f"msg_{response_id[5:]}", "output_index": 0, "content_index": 0}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    finish = usage = None
    opened = False
    try:
        async for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                finish = choice.get("finish_reason") or finish
                calls += delta.get("tool_calls") or []
                if delta.get("content"):
                    if not opened:
                        opened = True
                        item = _message(response_id, "")
                        item.update(status="in_progress", content=[])
                        yield event("response.output_item.added", output_index=0, item=item)
                        part = {"type": "output_text", "text": "", "annotations": []}
                        yield event("response.content_part.added", **at_text, part=part)
                    text.append(delta["content"])
                    yield event("response.output_text.delta", **at_text, delta=delta["content"])
    except Exception as exc:  # the model service broke off: say so, as OpenAI does
        failed = _response(body, response_id, "".join(text), [], None, usage, model)
        failed.update(status="failed", error={"code": "server_error", "message": str(exc)})
        yield event("response.failed", response=failed)
        return
    full = "".join(text)
    calls = [{k: v for k, v in call.items() if k != "index"} for call in calls]
    final = _response(body, response_id, full, calls, finish, usage, model)
    if opened:
        part = {"type": "output_text", "text": full, "annotations": []}
        yield event("response.output_text.done", **at_text, text=full)
        yield event("response.content_part.done", **at_text, part=part)
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
    for index, item in enumerate(final["output"]):
        if item["type"] == "function_call":
            yield event("response.output_item.added", output_index=index, item=item)
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
            yield event("response.output_item.done", output_index=index, item=item)
    done = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield event(done, response=final)
