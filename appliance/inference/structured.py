"""Structured output and tool calls: llama.cpp grammars built from JSON schemas, the tool
descriptions for chat templates that have none, and tool calls parsed from model output.

Grammar-constrained decoding makes a ``json_schema`` answer, and the arguments of a
``required`` or named tool call, valid by construction, even on the tiny bundled model.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from appliance.inference.openai_schema import ChatCompletionRequest, InvalidParam, NamedToolChoice

#: JSON Schema keywords llama.cpp's converter does not enforce (it would drop them).
UNSUPPORTED_KEYWORDS = (
    *("if", "then", "else", "not", "dependentRequired", "dependentSchemas"),
    *("patternProperties", "uniqueItems", "contains", "multipleOf", "propertyNames"),
    "unevaluatedProperties",
)
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _gbnf(schema: dict[str, Any], param: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    _refuse_keywords(schema, param)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions on what it can't do
        raise InvalidParam(f"{param}: this schema cannot be enforced ({exc}).", param) from None


def _refuse_keywords(schema: Any, param: str) -> None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in UNSUPPORTED_KEYWORDS:
                raise InvalidParam(
                    f"{param}: the JSON Schema keyword '{key}' cannot be enforced by "
                    "grammar-constrained decoding here; leave it out.",
                    param,
                )
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                value = list(value.values())  # its keys are names, not keywords
            _refuse_keywords(value, param)
    elif isinstance(schema, list):
        for item in schema:
            _refuse_keywords(item, param)


def forced_tools(request: ChatCompletionRequest) -> list[str]:
    """The tool names a call is forced among (empty when the model may answer in text)."""
    tools = [tool.function.name for tool in request.tools or []]
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return [choice.function.name]
    return tools if choice == "required" else []


def grammar(request: ChatCompletionRequest) -> str | None:
    """The GBNF grammar the answer is decoded under, if any."""
    forced = forced_tools(request)
    if forced:
        by_name = {tool.function.name: tool.function for tool in request.tools or []}
        alternatives = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": by_name[name].parameters or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for name in forced
        ]
        schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        return _gbnf(schema, "tools")
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _gbnf({"type": "object"}, "response_format")
    assert fmt.json_schema is not None
    return _gbnf(fmt.json_schema.schema or {"type": "object"}, "response_format.json_schema")


def tool_dicts(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """``tools`` in OpenAI's shape, as chat templates take them (None when there are none
    or ``tool_choice`` is ``none``)."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": tool.function.name,
                "description": tool.function.description or "",
                "parameters": tool.function.parameters or {"type": "object"},
            },
        }
        for tool in request.tools
    ]


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls' arguments as objects, as chat templates render them (``tojson``)."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                arguments = _json(call["function"]["arguments"])
                function = {**call["function"], "arguments": arguments or {}}
                calls.append({**call, "function": function})
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


def plain_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Messages for a chat template that knows no tools: the tool descriptions and the
    call format (Hermes style) in the system message, earlier calls as their text."""
    out = []
    for message in messages:
        content = message["content"]
        for call in message.get("tool_calls") or []:
            body = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
            content += f"<tool_call>{json.dumps(body, ensure_ascii=False)}</tool_call>"
        out.append({"role": message["role"], "content": content})
    if tools:
        described = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        text = (
            "You can call these functions (JSON Schema of their arguments):\n"
            f"{described}\n"
            'To call one, answer only with <tool_call>{"name": "…", "arguments": {…}}'
            "</tool_call>, one per call."
        )
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def tool_calls(text: str, names: list[str], forced: bool) -> tuple[str, list[dict[str, Any]]]:
    """The text and OpenAI ``tool_calls`` in a model's answer.

    Recognises Hermes/Qwen ``<tool_call>`` blocks, Mistral's ``[TOOL_CALLS]`` list and a
    bare JSON object (Llama 3.x, and what the grammar produces when a call is forced).
    Calls to functions not in ``names`` stay text.
    """
    candidates: list[Any] = []
    rest = text
    if "<tool_call>" in text:
        candidates = [_json(block) for block in TOOL_CALL.findall(text)]
        rest = TOOL_CALL.sub("", text).strip()
    elif text.lstrip().startswith("[TOOL_CALLS]"):
        found = _json(text.lstrip()[len("[TOOL_CALLS]") :])
        candidates = found if isinstance(found, list) else [found]
        rest = ""
    elif forced or text.lstrip().startswith("{"):
        candidates = [_json(text)]
        rest = ""
    calls = []
    for candidate in candidates:
        if not isinstance(candidate, dict) or candidate.get("name") not in names:
            return text, []
        arguments = candidate.get("arguments", candidate.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        function = {"name": candidate["name"], "arguments": arguments}
        calls.append(
            {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": function}
        )
    return (rest, calls) if calls else (text, [])


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
