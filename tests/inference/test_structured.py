"""Grammar-constrained answers on the batched engine (the product default), in this
process: JSON-schema output and forced tool calls always parse and match their schema,
side by side, and penalties and logit_bias change the sampling."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest
from conftest import make_settings

from appliance.errors import InvalidInput
from appliance.inference import models, sampling, structured
from appliance.inference import openai_schema as schema
from appliance.inference.base import Delta, Finish, physical_cores
from appliance.inference.batching import BatchedChatEngine
from appliance.inference.chat_api import ChatRequest
from appliance.inference.sampling import GenerationParams
from appliance.inference.scheduler import DONE, Job, Scheduler

pytestmark = pytest.mark.inference

CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
    },
    "required": ["name", "population"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture(scope="module")
def engine(models_dir):
    registry = models.load_registry(make_settings(models_dir.parent))
    model = registry.resolve("chat")
    built = BatchedChatEngine(
        model,
        registry.path(model),
        n_ctx=2048,
        n_threads=physical_cores(),
        n_gpu_layers=0,
        flash_attn=False,
        kv_cache_type="f16",
        parallel=4,
        prompt_chunk_tokens=64,
        prefix_cache_entries=2,
    )
    yield built
    built.close()


def chat_request(body: dict, max_tokens: int = 80) -> ChatRequest:
    request = schema.decode(body, schema.ChatCompletionRequest)
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=body.get("temperature", 0.0),
        seed=body.get("seed"),
        presence_penalty=body.get("presence_penalty", 0.0),
        frequency_penalty=body.get("frequency_penalty", 0.0),
        logit_bias=tuple((int(k), v) for k, v in (body.get("logit_bias") or {}).items()),
        grammar=structured.grammar(request),
    )
    return ChatRequest(
        messages=structured.template_messages(schema.clean_messages(request.messages)),
        params=params,
        tools=structured.tool_dicts(request),
        forced=bool(structured.forced_tools(request)),
    )


async def run(engine: BatchedChatEngine, requests: list[ChatRequest]) -> list[tuple[str, Finish]]:
    scheduler = Scheduler("chat", engine, queue_size=8, per_account=8)
    scheduler.start()
    loop = asyncio.get_running_loop()
    try:
        jobs = [Job(account=f"a{i}", payload=r, loop=loop) for i, r in enumerate(requests)]
        for job in jobs:
            scheduler.submit(job)
        out = []
        for job in jobs:
            parts, finish = [], None
            while (event := await asyncio.wait_for(job.events.get(), 240)) is not DONE:
                if isinstance(event, Delta):
                    parts.append(event.text)
                elif isinstance(event, Finish):
                    finish = event
            out.append(("".join(parts), finish))
        return out
    finally:
        scheduler.stop()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_schema_output_and_forced_calls_are_valid_side_by_side(engine):
    city = {
        "messages": user("Describe Paris."),
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}},
    }
    sampled = {**city, "temperature": 0.9, "seed": 3}
    call = {
        "messages": user("Weather in Oslo for 2 days?"),
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    answers = asyncio.run(run(engine, [chat_request(b, 48) for b in (city, sampled, call)]))
    for text, finish in answers[:2]:
        assert finish.reason == "stop", text
        value = json.loads(text)
        assert isinstance(value["name"], str) and isinstance(value["population"], int)
    text, finish = answers[2]
    _, calls = structured.tool_calls(text, ["get_weather"], forced=True)
    arguments = json.loads(calls[0]["function"]["arguments"])
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)


def test_names_values_and_patterns_with_escapes_come_back_as_the_schema_asks(engine):
    # llama-cpp-python's converter left backslashes as they were: the quote made a grammar
    # llama.cpp refused (a 400), the backslash one that asked for another name, and \d,
    # \. a grammar it refused.
    code, word = r"^\d{3}-\d{2}\.[a-z]{2,4}$", r"^[^\s,]{1,12}$"
    schema = {
        "type": "object",
        "properties": {
            'say "hi"': {"enum": ['a "quoted" word', "C:\\temp"]},
            "C:\\temp": {"const": "back\\slash"},
            "café ☕": {"type": "string", "pattern": code},
            "word": {"type": "string", "pattern": word},
        },
        "required": ['say "hi"', "C:\\temp", "café ☕", "word"],
    }
    body = {
        "messages": user("Fill in the form."),
        "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
    }
    ((text, finish),) = asyncio.run(run(engine, [chat_request(body, 120)]))
    assert finish.reason == "stop", text
    value = json.loads(text)
    assert list(value) == schema["required"]
    assert value['say "hi"'] in ('a "quoted" word', "C:\\temp")
    assert value["C:\\temp"] == "back\\slash"
    assert re.fullmatch(code, value["café ☕"]) and re.fullmatch(word, value["word"]), text
    assert "café ☕" in text  # as a model writes it, not as \u escapes


@pytest.mark.parametrize(
    ("pattern", "named"),
    [(r"^a\sb$", r"\s"), (r"^a\\b$", r"\\"), ('^say "hi"$', "'\"'"), (r"^(a)\1$", r"\1")],
)
def test_patterns_a_grammar_cannot_keep_are_refused_by_name(pattern, named):
    body = {
        "messages": user("Hi"),
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": {"type": "string", "pattern": pattern}},
        },
    }
    with pytest.raises(schema.InvalidParam, match=re.escape(named)):
        chat_request(body)


#: Pieces of patterns: literals, escapes, classes (negated too), the wildcard.
ATOMS = [
    *("a", "xy", "7", "-", " ", "é", ".", r"\d", r"\w", r"\D", r"\W", r"\S", r"\.", r"\-"),
    *(r"\/", r"\(", r"\)", r"\+", r"\?", r"\[", r"\]", r"\{", r"\}", r"\|", r"\^", r"\$"),
    *("[a-z]", "[A-Z0-9]", r"[\w.-]", "[^,]", r"[^\s]", r"[^\d\-]", "[.]", r"[\]a]", "[-a]"),
    *("]", "}", "[]a]", "[^]a]"),  # closing nothing, or first in a class: literals
]


def random_pattern(rng: random.Random, depth: int = 0) -> str:
    quantifier = rng.choice(["", "", "", "+", "*", "?", "{2}", "{1,3}", "{2,}"])
    if depth < 2 and rng.random() < 0.2:
        alternatives = [
            "".join(random_pattern(rng, depth + 1) for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(1, 3))
        ]
        return "(" + "|".join(alternatives) + ")" + quantifier
    return rng.choice(ATOMS) + quantifier


@pytest.mark.timeout(60)
def test_every_pattern_made_of_supported_pieces_gives_a_grammar_llama_cpp_parses(engine):
    # 300 patterns from a fixed seed. With the library's converter alone, 3 in 4 of such
    # patterns gave a grammar llama.cpp refused (a 400 that could not say why), and one
    # with a "]" or "}" that closes nothing never came back: the inference service's event
    # loop turned in the converter for good.
    rng = random.Random(7)  # noqa: S311 - test data, not a secret
    lib = engine._lib
    for _ in range(300):
        pattern = "^" + "".join(random_pattern(rng) for _ in range(rng.randint(1, 5))) + "$"
        re.compile(pattern)
        grammar = structured._gbnf({"type": "string", "pattern": pattern}, "p")
        sampler = lib.llama_sampler_init_grammar(engine.vocab, grammar.encode(), b"root")
        assert sampler, pattern
        lib.llama_sampler_free(sampler)


def test_a_schema_whose_grammar_would_hold_the_engine_is_refused_by_its_size():
    # llama.cpp parses a grammar on the engine's thread: 20,000 enum values took 1 s there.
    body = {
        "messages": user("Pick one."),
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "e", "schema": {"enum": list(range(20_000))}},
        },
    }
    with pytest.raises(schema.InvalidParam, match="grammar would be 184 KiB, over the 64 KiB"):
        chat_request(body)
    body["response_format"]["json_schema"]["schema"] = {"enum": list(range(2_000))}
    assert chat_request(body).params.grammar


def grammar_allows(engine, grammar: str, text: str) -> bool:
    """Whether ``grammar`` takes ``text`` whole, one character's tokens at a time, and then
    lets the answer end."""
    lib, vocab = engine._lib, engine.vocab
    sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, grammar
    try:
        for char in text:
            for token in engine.llama.tokenize(char.encode(), add_bos=False, special=False):
                if not sampling.allowed(lib, sampler, token):
                    return False
                lib.llama_sampler_accept(sampler, token)
        return sampling.allowed(lib, sampler, lib.llama_vocab_eos(vocab))
    finally:
        lib.llama_sampler_free(sampler)


@pytest.mark.timeout(120)
def test_what_a_pattern_grammar_allows_is_json_that_matches_the_pattern(engine):
    # The library's converter let ^a|b$ write "a (no closing quote), [ -~] and negated
    # classes a raw quote or backslash, and lazy +? nothing at all.
    patterns = [
        *(r"^a|b$", r"^(a|b)c$", r"^[ -~]{1,3}$", r"^[A-z]+$", r"^[^\w-]+$", r"^[^a-]$"),
        *(r"^a+?$", r"^\d{2}?x$", r"^.{2}$", r"^[^\s]+$", r"^\S\W\D$", r"^(?:ab)+$"),
        *(r"^[\]a]+$", r"^[]a]$", r"^a]}$", r"^[é-ë]+$", r"^[^\d\-]$", r"^\(\d\)$"),
    ]
    rng = random.Random(3)  # noqa: S311 - test data, not a secret
    alphabet = 'ab-_ 7"\\\t]}(é.'
    values = ["", "a", "b", "c", "ab", "ac", "aa", "7x", "77x", "(7)", "]", "a]}", '"', "\\"]
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(40)]
    for pattern in patterns:
        grammar = structured._gbnf({"type": "string", "pattern": pattern}, "p")
        for value in values:
            for text in (json.dumps(value, ensure_ascii=False), f'"{value}"'):
                if grammar_allows(engine, grammar, text):
                    assert re.fullmatch(pattern[1:-1], json.loads(text)), (pattern, text)
    allowed = structured._gbnf({"type": "string", "pattern": r"^[a-z]{2}\d]}$"}, "p")
    assert grammar_allows(engine, allowed, '"ab1]}"')


def test_a_grammar_llama_cpp_cannot_parse_is_refused_without_printing_it(engine, capfd):
    # llama.cpp prints a grammar it cannot parse, whole, to stderr (the service's log); a
    # grammar holds the names and values of the request's schema.
    params = GenerationParams(max_tokens=8, grammar='root ::= "private" \\q')
    with pytest.raises(InvalidInput, match="could not be built"):
        sampling.grammar(engine._lib, engine.vocab, params)
    assert "private" not in capfd.readouterr().err


def test_logit_bias_and_penalties_change_the_answer(engine):
    plain = {"messages": user("Write the word cat twenty times.")}
    ((text, _),) = asyncio.run(run(engine, [chat_request(plain, 24)]))
    banned = engine.llama.tokenize(text.split()[0].encode(), add_bos=False, special=False)[0]
    biased = {**plain, "logit_bias": {str(banned): -100}}
    penalised = {**plain, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    (other, _), (varied, _) = asyncio.run(
        run(engine, [chat_request(biased, 24), chat_request(penalised, 24)])
    )
    assert banned not in engine.llama.tokenize(other.encode(), add_bos=False, special=False)
    assert varied.lower().count("cat") < text.lower().count("cat") - 2
