"""Structured output and tool calls: llama.cpp grammars built from JSON schemas, the tool
descriptions for chat templates that have none, and tool calls parsed from model output.

Grammar-constrained decoding makes a ``json_schema`` answer, and the arguments of a
``required`` or named tool call, valid by construction, even on the tiny bundled model.
"""

from __future__ import annotations

import functools
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
    _refuse_keywords(schema, param)
    try:
        converter = _converter()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        copy = json.loads(json.dumps(schema))  # resolve_refs rewrites the $refs it meets
        converter.visit(converter.resolve_refs(copy, "schema"), "")
        return converter.format_grammar()
    except Exception as exc:  # the converter raises plain exceptions on what it can't do
        raise InvalidParam(f"{param}: this schema cannot be enforced ({exc}).", param) from None


@functools.cache
def _converter() -> type:
    """llama-cpp-python's JSON-schema-to-GBNF converter, with its literals (property names,
    ``const`` and ``enum`` values) escaped as llama.cpp's own converter escapes them.

    The library's own leaves a backslash as it is: a name or value holding a quote made a
    grammar llama.cpp could not parse, and one holding a backslash a grammar that asks for
    another name (``"a\\b"`` became a, backspace). Names and values arrive as ``json.dumps``
    text, with non-ASCII as ``\\u`` escapes: written back with those characters as they
    are, as a model writes them, rather than making the model spell out the escapes.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _format_literal(self, literal: str) -> str:
            if len(literal) > 1:  # JSON text; a single character is one of not_literal's
                literal = json.dumps(json.loads(literal), ensure_ascii=False)
            return '"' + literal.translate(_GBNF_LITERAL_ESCAPES) + '"'

        def _visit_pattern(self, pattern: str, name: str) -> str:
            return super()._visit_pattern(_gbnf_pattern(pattern), name)

    return Converter


_GBNF_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"})
#: What a JSON string cannot hold as it is: a quote, a backslash, control characters.
_NOT_IN_JSON = r"\x22\x5C\x00-\x1F"
#: Shorthand classes: their ranges inside a class, the class outside one.
_SHORTHANDS = {"d": "0-9", "w": "a-zA-Z0-9_"}
_SPACE = r"\x20\x09\x0A\x0D"
_NEGATED = {"D": "0-9", "W": "a-zA-Z0-9_", "S": _SPACE}


def _gbnf_pattern(pattern: str) -> str:
    """A ``pattern`` rewritten so that llama.cpp's grammar parser takes what the converter
    makes of it, and the string it allows is valid JSON.

    The converter passes ``\\d``, ``\\.``, ``\\/`` … through, which the parser refuses: the
    shorthands become classes, escaped punctuation the class of its code (``[\\x2E]``, one
    unit for a quantifier). ``.`` and negated classes would let the model write a quote, a
    backslash or a control character into the string: they exclude those. A quote or a
    backslash the pattern asks for, and the escapes with no such form (``\\s`` outside a
    negated class, ``\\b``, back-references), are refused by name. A ``]`` or ``}`` that
    closes nothing, on which the converter looped forever, is a class of its code too.
    """
    out: list[str] = []
    negated, in_class, in_braces, opened, i = False, False, False, 0, 0
    while i < len(pattern):
        char, i = pattern[i], i + 1
        if char == '"':
            raise ValueError("a quote in a pattern is not supported")
        if char == "\\" and i < len(pattern):
            escaped, i = pattern[i], i + 1
            if escaped in _SHORTHANDS:
                out.append(_SHORTHANDS[escaped] if in_class else f"[{_SHORTHANDS[escaped]}]")
            elif escaped in _NEGATED and not in_class:
                out.append(f"[^{_NEGATED[escaped]}{_NOT_IN_JSON}]")
            elif escaped == "s" and in_class and negated:
                out.append(_SPACE)
            elif escaped.isascii() and not escaped.isalnum() and escaped not in '"\\':
                out.append(f"\\x{ord(escaped):02X}" if in_class else f"[\\x{ord(escaped):02X}]")
            else:
                raise ValueError(f"the pattern escape \\{escaped} is not supported here")
        elif in_class:
            if char == "]" and "".join(out[opened:]) in ("", "^"):
                char = "\\x5D"  # first in its class: a literal
            elif char == "]":
                out.append(_NOT_IN_JSON if negated else "")
                in_class = False
            out.append(char)
        elif char == ".":
            out.append(f"[^{_NOT_IN_JSON}]")
        elif char == "[":
            in_class, negated = True, pattern.startswith("^", i)
            out.append(char)
            opened = len(out)
        elif char == "{":
            in_braces = True
            out.append(char)
        elif char == "]" or (char == "}" and not in_braces):
            # A literal in a regular expression; the converter loops forever on it.
            out.append(f"[\\x{ord(char):02X}]")
        else:
            in_braces = in_braces and char != "}"
            out.append(char)
    return "".join(out)


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
