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
#: Keywords whose number a grammar spells out as that many repetitions (see MAX_REPEAT).
COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _gbnf(schema: dict[str, Any], param: str) -> str:
    _refuse_keywords(schema, param)
    try:
        converter = _converter()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        copy = json.loads(json.dumps(schema))  # resolve_refs rewrites the $refs it meets
        converter.visit(converter.resolve_refs(copy, "schema"), "")
        grammar = converter.format_grammar()
    except Exception as exc:  # the converter raises plain exceptions on what it can't do
        raise InvalidParam(f"{param}: this schema cannot be enforced ({exc}).", param) from None
    if len(grammar.encode()) > MAX_GRAMMAR_BYTES:
        raise InvalidParam(
            f"{param}: this schema's grammar would be {len(grammar.encode()) // 1024} KiB, over "
            f"the {MAX_GRAMMAR_BYTES // 1024} KiB enforced here (a long enum, very many "
            "properties).",
            param,
        )
    return grammar


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
            if len(literal) > 1:  # JSON text (one character needs no round trip)
                literal = json.dumps(json.loads(literal), ensure_ascii=False)
            return '"' + literal.translate(_GBNF_LITERAL_ESCAPES) + '"'

        def _visit_pattern(self, pattern: str, name: str) -> str:
            return super()._visit_pattern(_gbnf_pattern(pattern), name)

    return Converter


_GBNF_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\r": "\\r", "\n": "\\n"})
#: What a JSON string cannot hold as it is: control characters, a quote, a backslash.
_NOT_IN_JSON = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
_DIGITS = ((0x30, 0x39),)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = ((0x09, 0x0A), (0x0D, 0x0D), (0x20, 0x20))
#: Escapes that stand for a class: (its ranges, whether it is their complement).
_SHORTHANDS = {
    "d": (_DIGITS, False),
    "w": (_WORD, False),
    "D": (_DIGITS, True),
    "W": (_WORD, True),
    "S": (_SPACE, True),
}
#: The most repetitions a grammar may ask for: llama.cpp refuses more ("exceeds sane
#: defaults"), and a schema with tens of thousands nested deep enough to overflow its
#: parser's stack crashed the inference service.
MAX_REPEAT = 1000
#: The largest grammar a request may bring: llama.cpp parses it on the engine's thread when
#: the request starts, holding every stream meanwhile (0.1 s for 60 KB here, 1 s for 190 KB:
#: an enum of 20,000 values). A 200-property object's is 16 KB.
MAX_GRAMMAR_BYTES = 64 * 1024


def _gbnf_pattern(pattern: str) -> str:
    """A ``pattern`` rewritten so that what llama.cpp's grammar allows matches it and is
    valid JSON string content, or a ``ValueError`` naming what cannot be kept so.

    llama-cpp-python's converter passes ``\\d``, ``\\.`` … through (llama.cpp's parser
    refuses them), reads ``^a|b$`` as ``"a`` or ``b"``, lazy ``+?`` as "optional", and loops
    forever on a ``]`` or ``}`` that closes nothing. Here every class (``[...]``, the
    shorthands, escaped punctuation, ``.``) becomes a class of code points without those a
    JSON string cannot hold as they are (quotes, backslashes, control characters), the body
    is one group between the anchors, and lazy quantifiers are greedy ones (the same strings
    match in full). A quote or backslash the pattern asks for outside a class, ``\\s``
    outside a negated class, ``\\b``, back-references, inner anchors and repetitions above
    ``MAX_REPEAT`` are refused by name.
    """
    if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$" or _escaped(pattern, -1):
        raise ValueError('a pattern must start with "^" and end with "$"')
    body, out, i = pattern[1:-1], [], 0
    while i < len(body):
        char, i = body[i], i + 1
        if char == "\\" and i < len(body):
            escaped, i = body[i], i + 1
            if escaped in _SHORTHANDS:
                out.append(_class(*_SHORTHANDS[escaped]))
            else:
                out.append(_class(((ord(_punctuation(escaped)),) * 2,), False))
        elif char == "[":
            ranges, negated, i = _parse_class(body, i)
            out.append(_class(ranges, negated))
        elif char == ".":
            out.append(_class((), True))
        elif char == "(" and body.startswith("?:", i):  # a group that captures nothing
            out.append(char)
            i += 2
        elif char in "*+?" or (char == "{" and "}" in body[i:]):
            if char == "{":
                close = body.index("}", i)
                bounds = [b.strip() for b in body[i:close].split(",")]
                if any(b.isdigit() and int(b) > MAX_REPEAT for b in bounds):
                    raise ValueError(f"repetitions above {MAX_REPEAT} are not supported")
                char, i = body[i - 1 : close + 1], close + 1
            out.append(char)
            if body.startswith("?", i):  # lazy: the same strings match in full
                i += 1
        elif char in "]}":  # closes nothing: a literal
            out.append(_class(((ord(char),) * 2,), False))
        elif char in "^$":
            raise ValueError(f"'{char}' inside a pattern is not supported")
        elif char == '"' or char == "\\" or ord(char) < 0x20:
            raise ValueError(f"the character {char!r} in a pattern is not supported")
        else:
            out.append(char)
    return "^(" + "".join(out) + ")$"


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd run of backslashes."""
    index %= len(text)
    run = len(text[:index]) - len(text[:index].rstrip("\\"))
    return run % 2 == 1


def _punctuation(escaped: str) -> str:
    """The character an escape such as ``\\.`` stands for; other escapes are refused."""
    if escaped.isascii() and not escaped.isalnum() and escaped not in '"\\':
        return escaped
    raise ValueError(f"the pattern escape \\{escaped} is not supported here")


def _parse_class(body: str, i: int) -> tuple[list[tuple[int, int]], bool, int]:
    """The code point ranges of the class whose ``[`` ends at ``i``, whether it is negated,
    and the index after its ``]``."""
    negated = body.startswith("^", i)
    i += negated
    ranges: list[tuple[int, int]] = []
    first = True
    while i < len(body) and (body[i] != "]" or first):
        first = False
        char, i = body[i], i + 1
        if char == "\\" and i < len(body):
            escaped, i = body[i], i + 1
            if escaped in ("d", "w"):
                ranges += _SHORTHANDS[escaped][0]
                continue
            if escaped == "s" and negated:
                ranges += _SPACE
                continue
            char = _punctuation(escaped)
        low = ord(char)
        if body.startswith("-", i) and i + 1 < len(body) and body[i + 1] != "]":
            high, i = body[i + 1], i + 2
            if high == "\\":
                raise ValueError("an escape closing a range in a pattern is not supported")
            if ord(high) < low:
                raise ValueError(f"the range {char}-{high} in a pattern is reversed")
            ranges.append((low, ord(high)))
        else:
            ranges.append((low, low))
    if i >= len(body):
        raise ValueError("a '[' in the pattern is not closed")
    return ranges, negated, i + 1


def _class(ranges: tuple | list, negated: bool) -> str:
    """A GBNF class of ``ranges`` (or of their complement), without what a JSON string
    cannot hold as it is."""
    if negated:
        return "[^" + "".join(map(_code_range, [*ranges, *_NOT_IN_JSON])) + "]"
    kept = []
    for low, high in sorted(ranges):
        for bad_low, bad_high in _NOT_IN_JSON:  # cut the range around each
            if low <= bad_high and high >= bad_low:
                if low < bad_low:
                    kept.append((low, bad_low - 1))
                low = max(low, bad_high + 1)
        if low <= high:
            kept.append((low, high))
    if not kept:
        raise ValueError("a class of the pattern holds nothing a JSON string can")
    return "[" + "".join(map(_code_range, kept)) + "]"


def _code_range(bounds: tuple[int, int]) -> str:
    low, high = (_code(c) for c in bounds)
    return low if low == high else f"{low}-{high}"


def _code(point: int) -> str:
    return f"\\x{point:02X}" if point < 0x100 else f"\\U{point:08X}"


def _refuse_keywords(schema: Any, param: str) -> None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in UNSUPPORTED_KEYWORDS:
                raise InvalidParam(
                    f"{param}: the JSON Schema keyword '{key}' cannot be enforced by "
                    "grammar-constrained decoding here; leave it out.",
                    param,
                )
            if key in COUNTS and isinstance(value, int) and value > MAX_REPEAT:
                raise InvalidParam(
                    f"{param}: '{key}' above {MAX_REPEAT} cannot be enforced by "
                    "grammar-constrained decoding here.",
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
