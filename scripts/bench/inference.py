"""Benchmark the inference service against llama.cpp called directly, on the bundled models.

Usage::

    .venv/bin/python scripts/bench/inference.py [--data-dir DIR] [--runs N] [--record]

Starts a real ``python -m appliance inference`` child on a free loopback port and measures:

1. chat: time to first token (TTFT) and decode tokens/s through the service (streaming
   ``/v1/chat/completions``) vs a ``llama_cpp.Llama`` on the same file with the engine's
   settings, in this process. Each run uses a new prompt that differs from the previous
   ones at its first tokens, so neither path reuses a cached prefix; one warm-up request
   per path is discarded.
2. conversation: TTFT of turn 10 of a 10-turn conversation whose turns 1..9 went through
   the service just before (warm prefix) vs the same prompt with nothing cached (cold).
3. concurrency: aggregate completion tokens/s and TTFT percentiles at 1, 4 and 8
   simultaneous streams from different accounts.
4. embeddings: texts/s one text per request vs 32 per request through ``/v1/embeddings``,
   and through ``EmbeddingEngine.embed`` in this process for reference.

Reported numbers are medians over ``--runs``. Ratios compare against a baseline measured
in the same process, minutes apart, because the benchmark machines are shared and noisy.
``--record`` appends the result table to docs/benchmarks.md. Exit status is 0 even when a
target is missed; PASS/FAIL is in the table.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from common import (
    OthersLoad,
    append_to_doc,
    bench_data_dir,
    bench_parser,
    busy_at_start,
    date_code_machine,
    flag_noise,
    machine_info,
    markdown_table,
    notes_block,
    percentile,
    rss_mb,
    run_main,
    setup_table,
    start_inference,
    text_table,
)

from appliance import vault
from appliance.config import Settings
from appliance.inference import models
from appliance.inference.base import KV_TYPES, gpu_offload_supported, physical_cores
from appliance.inference.client import ACCOUNT_HEADER
from appliance.inference.embedding import EmbeddingEngine

SECTION = "## Inference (scripts/bench/inference.py)"

CHAT_MAX_TOKENS = 128
CHAT_PAIRS = 3  # service/direct pairs per run: cheap, and the box is noisy
CONCURRENT_MAX_TOKENS = 64
CONCURRENCY_LEVELS = (1, 4, 8)
EMBED_TEXTS = 256
EMBED_BATCH = 32
SEED = 1234
OVERHEAD_TARGET = 0.05
WARM_RATIO_TARGET = 0.30
UNUSABLE_SHARE = 0.25  # ... above which --record refuses to write it down

SYSTEM = "You are a helpful assistant. Answer in plain English."
STORY_TOPICS = (
    "a lighthouse keeper who finds a message in a bottle",
    "a baker who opens a shop on the moon",
    "two friends lost in a library that never ends",
    "a robot learning to paint the sea",
    "a village where it rains only on Tuesdays",
    "an old clockmaker and her stubborn apprentice",
    "a fox who runs the night train across the mountains",
    "a girl who can hear what trees think",
    "a detective who solves crimes by smell alone",
    "a city that moves a little further north every night",
    "a beekeeper who wins a chess tournament",
    "a whale that sings the weather forecast",
)

# A realistic conversation: ten user turns and the nine assistant answers in between,
# each roughly 40-80 tokens. Fixed text, so every run sends the same tokens.
CONVERSATION = [
    (
        "Hi! I'm planning a vegetable garden in my backyard for the first time. The space "
        "gets about six hours of sun a day and the soil is a bit clay-heavy. What should I "
        "think about before I buy any seeds or plants?",
        "Great project! First, improve the clay soil: mix in a few inches of compost so it "
        "drains better and stays loose. Decide whether you want raised beds, which warm up "
        "faster in spring. Six hours of sun suits most vegetables, so list what your family "
        "actually eats and start with a few easy crops.",
    ),
    (
        "We eat a lot of tomatoes, salad greens, beans and zucchini. My kids also want to "
        "grow strawberries and maybe pumpkins for Halloween. Is that too much for a first "
        "year, given the bed would be roughly three by four meters?",
        "That is a reasonable mix, but pumpkins sprawl a lot and could take half the bed. "
        "Tomatoes, greens, bush beans and one or two zucchini plants fit well in twelve "
        "square meters. Put strawberries in a separate pot or border, and try one pumpkin "
        "vine trained along a fence so it does not smother everything else.",
    ),
    (
        "Good idea about the fence. When should I start the tomatoes? I live in a place "
        "where the last frost is usually around the middle of May, and summers are warm "
        "but not very long.",
        "Start tomato seeds indoors about six to eight weeks before the last frost, so late "
        "March or early April for you. Keep them on a bright windowsill or under a lamp, "
        "and harden them off outdoors for a week before planting in late May. Choose early "
        "or mid-season varieties so they ripen before autumn.",
    ),
    (
        "What does hardening off mean exactly? I have read the phrase a few times but I am "
        "not sure how long the plants should stay outside each day or what happens if I "
        "skip that step entirely.",
        "Hardening off means getting indoor seedlings used to sun, wind and cooler nights "
        "gradually. Put them outside in shade for an hour or two at first, then add an "
        "hour or two each day and move them into sun. Skipping it often scorches the "
        "leaves or shocks the plants, which sets them back by weeks.",
    ),
    (
        "Makes sense. For the salad greens, can I sow them directly in the bed, and is "
        "there a way to keep harvesting all summer instead of getting one big crop that "
        "all bolts at the same time in the heat?",
        "Yes, sow lettuce and other greens directly from mid-April. For a steady supply, "
        "sow a short row every two weeks instead of everything at once. In midsummer, "
        "choose bolt-resistant varieties and sow them where taller plants like tomatoes "
        "give some afternoon shade. Harvest outer leaves so plants keep producing.",
    ),
    (
        "How often should I water everything once it is planted? I work during the day, so "
        "I can only water early in the morning or in the evening, and I would rather not "
        "waste water if I can avoid it.",
        "Water deeply two or three times a week rather than a little every day, aiming for "
        "roughly two to three centimeters per week including rain. Morning is best because "
        "leaves dry quickly, which limits disease. A layer of straw mulch keeps the soil "
        "moist much longer, and a cheap soaker hose on a timer saves a lot of effort.",
    ),
    (
        "I have heard that some plants grow better next to each other. Is companion "
        "planting real or mostly a myth? For example, people say basil helps tomatoes and "
        "marigolds keep pests away from everything.",
        "Some of it is well supported and some is folklore. Marigolds can reduce certain "
        "soil nematodes and attract helpful insects, and flowering herbs bring pollinators. "
        "Basil next to tomatoes is mostly convenient for cooking rather than proven pest "
        "control. The most reliable benefit comes from mixing plants so pests spread less.",
    ),
    (
        "Speaking of pests, what should I do about slugs? Our neighbor said they destroyed "
        "all of her lettuce last year and I would prefer not to use chemical pellets "
        "because of the kids and our dog.",
        "Slugs are the classic lettuce problem. Check the bed at dusk and pick them off, "
        "especially after rain. Beer traps sunk into the soil work well, and copper tape "
        "around raised beds deters them. Water in the morning so the surface is dry at "
        "night, and encourage birds and frogs, which eat slugs happily.",
    ),
    (
        "Thanks, that is really helpful. Do I need to fertilize during the season, or is "
        "the compost I mix in at the start enough for vegetables like tomatoes and zucchini "
        "that are known to be hungry plants?",
        "Compost gives a good base, but tomatoes and zucchini benefit from extra feeding "
        "once they start flowering. A balanced organic fertilizer or diluted tomato feed "
        "every two weeks is plenty. Avoid too much nitrogen, which gives lush leaves but "
        "fewer fruits. Greens and beans usually need nothing beyond the compost.",
    ),
    (
        "Last question for today: at the end of the season, what should I do with the bed "
        "so it is in good shape next spring? Should I dig everything over, leave the old "
        "plants, or plant something over the winter?",
        "",
    ),
]

WORDS_TEXT = (
    "the a an of to in on for with about under over between after before during "
    "garden river city model engine battery window market teacher student doctor story "
    "weather mountain kitchen library computer network policy invoice meeting project "
    "quickly slowly carefully often rarely never always sometimes almost nearly "
    "build read write measure explain compare improve repair deliver protect discover "
    "green quiet ancient modern bright heavy narrow simple complex useful fragile "
    "Monday summer morning evening yesterday tomorrow report budget contract customer"
)
WORDS = WORDS_TEXT.split()


# -- measurements --------------------------------------------------------------------------


@dataclass
class StreamResult:
    ttft: float  # request sent -> first non-empty content
    decode_tps: float  # (tokens - 1) / (last content - first content)
    total: float  # request sent -> end of stream
    tail: float  # last content -> end of stream
    tokens: int
    text: str
    usage: dict = field(default_factory=dict)
    t0: float = 0.0
    t_first: float = 0.0
    t_last: float = 0.0
    t_end: float = 0.0


def _stream_result(
    t0: float, t_first: float | None, t_last: float, t_end: float, tokens: int, text: str, usage
) -> StreamResult:
    if t_first is None:
        raise RuntimeError("the stream produced no text")
    span = t_last - t_first
    return StreamResult(
        ttft=t_first - t0,
        decode_tps=(tokens - 1) / span if tokens > 1 and span > 0 else float("nan"),
        total=t_end - t0,
        tail=t_end - t_last,
        tokens=tokens,
        text=text,
        usage=usage or {},
        t0=t0,
        t_first=t_first,
        t_last=t_last,
        t_end=t_end,
    )


def _timed_text(
    contents: Iterable[str | None],
) -> tuple[float, float | None, float, float, list[str]]:
    """Consume ``contents`` (empty for chunks without text), timed: when it started, when
    the first and the last text came, when it ended, and the texts."""
    parts: list[str] = []
    t_first = None
    t_last = 0.0
    t0 = time.perf_counter()
    for content in contents:
        if content:
            now = time.perf_counter()
            t_first = now if t_first is None else t_first
            t_last = now
            parts.append(content)
    return t0, t_first, t_last, time.perf_counter(), parts


def service_stream(client: httpx.Client, body: dict, account: str | None = None) -> StreamResult:
    """One streaming chat completion through the service, timed on the client side."""
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    headers = {ACCOUNT_HEADER: account} if account else {}
    usage: dict = {}

    def contents() -> Iterator[str | None]:
        with client.stream("POST", "/v1/chat/completions", json=payload, headers=headers) as reply:
            if not reply.is_success:
                reply.read()
                raise RuntimeError(f"chat request failed: {reply.status_code} {reply.text[:300]}")
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"chat stream failed: {chunk['error']}")
                usage.update(chunk.get("usage") or {})
                for choice in chunk.get("choices", ()):
                    yield choice.get("delta", {}).get("content")

    t0, t_first, t_last, t_end, parts = _timed_text(contents())
    tokens = usage.get("completion_tokens", len(parts))
    return _stream_result(t0, t_first, t_last, t_end, tokens, "".join(parts), usage)


def direct_stream(llama, messages: list[dict], max_tokens: int) -> StreamResult:
    """The same request through ``llama_cpp.Llama.create_chat_completion`` in-process."""

    def contents() -> Iterator[str | None]:  # the request starts inside the timing
        for chunk in llama.create_chat_completion(
            messages=messages, temperature=0.0, max_tokens=max_tokens, seed=SEED, stream=True
        ):
            yield chunk["choices"][0]["delta"].get("content")

    t0, t_first, t_last, t_end, parts = _timed_text(contents())
    text = "".join(parts)
    # llama-cpp-python's stream carries no usage: count the tokens of the answer.
    tokens = len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    return _stream_result(t0, t_first, t_last, t_end, tokens, text, None)


def story_messages(tag: str, index: int) -> list[dict[str, str]]:
    """A prompt whose first tokens differ between runs (``tag``), so no prefix is reused."""
    topic = STORY_TOPICS[index % len(STORY_TOPICS)]
    return [
        {"role": "system", "content": f"{tag}. {SYSTEM}"},
        {"role": "user", "content": f"Write a long, detailed story about {topic}."},
    ]


def chat_body(messages: list[dict], max_tokens: int) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": SEED}


def load_direct_llama(settings: Settings, health: dict):
    """A Llama configured exactly as ``load_engine`` configures the service's chat model."""
    import llama_cpp

    cfg = settings.inference
    registry = models.load_registry(settings)
    model = registry.resolve("chat", cfg.chat_model)
    if model.id != health["chat_model"]:
        raise RuntimeError(f"the service runs {health['chat_model']}, settings say {model.id}")
    n_ctx = cfg.n_ctx or min(model.context_length or 8192, 8192)
    gpu = gpu_offload_supported()
    n_gpu_layers = (-1 if gpu else 0) if cfg.n_gpu_layers < 0 else cfg.n_gpu_layers
    if not gpu:
        n_gpu_layers = 0
    n_threads = cfg.n_threads or physical_cores()
    llama = llama_cpp.Llama(
        model_path=str(registry.path(model)),
        n_ctx=n_ctx,
        n_batch=min(512, n_ctx),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_gpu_layers=n_gpu_layers,
        flash_attn=cfg.flash_attn,
        type_k=KV_TYPES[cfg.kv_cache_type],
        type_v=KV_TYPES[cfg.kv_cache_type],
        seed=SEED,
        verbose=False,
    )
    if llama.n_ctx() != health["n_ctx"]:
        raise RuntimeError(f"n_ctx differs: service {health['n_ctx']}, direct {llama.n_ctx()}")
    return llama, {"n_ctx": n_ctx, "n_threads": n_threads, "n_batch": min(512, n_ctx)}


def bench_chat(client: httpx.Client, llama, runs: int, max_tokens: int) -> dict[str, Any]:
    """TTFT and decode tokens/s, service vs direct: ``CHAT_PAIRS`` interleaved pairs a run."""
    # Warm-up: the first decode of a fresh context is several times slower.
    service_stream(client, chat_body(story_messages("Warm-up", 0), max_tokens))
    direct_stream(llama, story_messages("Warm-up", 0), max_tokens)
    service: list[StreamResult] = []
    direct: list[StreamResult] = []
    same_text = 0
    for pair in range(runs * CHAT_PAIRS):
        messages = story_messages(f"Session {pair + 1}", pair + 1)
        order = ("service", "direct") if pair % 2 == 0 else ("direct", "service")
        results = {}
        for path in order:  # alternate the order so drift hits both paths alike
            if path == "service":
                results[path] = service_stream(client, chat_body(messages, max_tokens))
            else:
                results[path] = direct_stream(llama, messages, max_tokens)
        svc, dct = results["service"], results["direct"]
        if svc.text == dct.text and svc.tokens != dct.tokens:
            # Same greedy text from the same prompt: the same tokens. Re-tokenizing the
            # direct path's text can merge pieces the model produced separately.
            dct = _stream_result(
                dct.t0, dct.t_first, dct.t_last, dct.t_end, svc.tokens, dct.text, None
            )
        service.append(svc)
        direct.append(dct)
        same_text += svc.text == dct.text
        print(
            f"  pair {pair + 1}: service TTFT {ms(svc.ttft)}, {svc.decode_tps:.1f} tok/s "
            f"({svc.tokens} tokens, tail {ms(svc.tail)}); direct TTFT {ms(dct.ttft)}, "
            f"{dct.decode_tps:.1f} tok/s ({dct.tokens} tokens)"
        )
    return {
        "samples": len(service),
        "service_ttft": median(r.ttft for r in service),
        "direct_ttft": median(r.ttft for r in direct),
        "service_ttft_best": min(r.ttft for r in service),
        "direct_ttft_best": min(r.ttft for r in direct),
        "service_tps": median(r.decode_tps for r in service),
        "direct_tps": median(r.decode_tps for r in direct),
        "service_tps_best": max(r.decode_tps for r in service),
        "direct_tps_best": max(r.decode_tps for r in direct),
        "service_tail": median(r.tail for r in service),
        "direct_tail": median(r.tail for r in direct),
        "prompt_tokens": service[0].usage.get("prompt_tokens"),
        "cached_tokens": median(cached(r) for r in service),
        "completion_tokens": median(r.tokens for r in service),
        "same_text": f"{same_text}/{len(service)}",
    }


def conversation_messages(system_tag: str, turns: int) -> list[dict[str, str]]:
    """System prompt and the first ``turns`` user turns with the answers in between."""
    messages = [{"role": "system", "content": f"{system_tag}. {SYSTEM}"}]
    for index, (user, assistant) in enumerate(CONVERSATION[:turns]):
        messages.append({"role": "user", "content": user})
        if index < turns - 1:
            messages.append({"role": "assistant", "content": assistant})
    return messages


def bench_conversation(client: httpx.Client, runs: int) -> dict[str, Any]:
    """TTFT of turn 10 with turns 1..9 cached (warm) vs the same prompt uncached (cold)."""
    turns = len(CONVERSATION)
    warm: list[StreamResult] = []
    cold: list[StreamResult] = []
    for run in range(runs):
        tag = f"Conversation {run + 1}"
        for turn in range(1, turns):  # turns 1..9 put the conversation in the cache
            service_stream(client, chat_body(conversation_messages(tag, turn), 16))
        warm.append(service_stream(client, chat_body(conversation_messages(tag, turns), 16)))
        # Cold: the same ten turns, but the system prompt differs at its first word, so
        # no cached prefix beyond the template's first few tokens matches.
        cold_tag = f"Fresh conversation {run + 1}"
        cold.append(service_stream(client, chat_body(conversation_messages(cold_tag, turns), 16)))
        print(
            f"  run {run + 1}: turn 10 warm TTFT {ms(warm[-1].ttft)} "
            f"(cached {cached(warm[-1])} of {warm[-1].usage.get('prompt_tokens')} prompt "
            f"tokens), cold TTFT {ms(cold[-1].ttft)} (cached {cached(cold[-1])})"
        )
    warm_ttft = median(r.ttft for r in warm)
    cold_ttft = median(r.ttft for r in cold)
    return {
        "warm_ttft": warm_ttft,
        "cold_ttft": cold_ttft,
        "ratio": warm_ttft / cold_ttft,
        "prompt_tokens": warm[0].usage.get("prompt_tokens"),
        "warm_cached": median(cached(r) for r in warm),
        "cold_cached": median(cached(r) for r in cold),
    }


def cached(result: StreamResult) -> int:
    return result.usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)


def bench_concurrency(url: str, key: str, runs: int) -> dict[int, dict[str, Any]]:
    """Aggregate completion tokens/s and TTFT percentiles with N simultaneous streams."""
    out = {}
    for streams in CONCURRENCY_LEVELS:
        rates: list[float] = []
        ttfts: list[float] = []
        for run in range(runs):
            barrier = threading.Barrier(streams)
            results: list[StreamResult | BaseException | None] = [None] * streams
            starts = [0.0] * streams
            ends = [0.0] * streams
            args = (url, key, streams, run, barrier, results, starts, ends)
            threads = [
                threading.Thread(target=_concurrent_stream, args=(i, *args), daemon=True)
                for i in range(streams)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for result in results:
                if not isinstance(result, StreamResult):
                    raise RuntimeError(f"a concurrent stream failed: {result!r}")
            done = [r for r in results if isinstance(r, StreamResult)]
            wall = max(ends) - min(starts)
            rates.append(sum(r.tokens for r in done) / wall)
            ttfts.extend(r.ttft for r in done)
        out[streams] = {
            "tps": statistics.median(rates),
            "ttft_p50": percentile(ttfts, 50),
            "ttft_p95": percentile(ttfts, 95),
        }
        print(
            f"  {streams} stream(s): {out[streams]['tps']:.1f} tok/s aggregate, TTFT p50 "
            f"{ms(out[streams]['ttft_p50'])}, p95 {ms(out[streams]['ttft_p95'])}"
        )
    return out


def _concurrent_stream(
    index: int,
    url: str,
    key: str,
    streams: int,
    run: int,
    barrier: threading.Barrier,
    results: list,
    starts: list[float],
    ends: list[float],
) -> None:
    """One of ``streams`` simultaneous streams, each from its own account."""
    messages = story_messages(f"Stream {streams}-{run + 1}-{index + 1}", index)
    try:
        with httpx.Client(base_url=url, headers=auth(key), timeout=600) as client:
            client.get("/healthz")  # open the connection before the clock starts
            barrier.wait(timeout=120)
            starts[index] = time.perf_counter()
            results[index] = service_stream(
                client,
                chat_body(messages, CONCURRENT_MAX_TOKENS),
                account=f"bench-{streams}-{run}-{index}",
            )
            ends[index] = time.perf_counter()
    except BaseException as exc:  # reported by the caller
        barrier.abort()
        results[index] = exc


def sentences(count: int) -> list[str]:
    """Deterministic sentences of 3 to ~120 words (most short, a few long)."""
    rng = random.Random(20240601)
    out = []
    for index in range(count):
        length = 3 + int(rng.expovariate(1 / 18)) % 120
        words = [rng.choice(WORDS) for _ in range(length)]
        out.append(f"{index}: " + " ".join(words).capitalize() + ".")
    return out


def bench_embeddings(
    client: httpx.Client, engine: EmbeddingEngine, runs: int
) -> dict[str, float | str]:
    texts = sentences(EMBED_TEXTS)
    batches = [texts[i : i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)]

    def via_service(groups: list[list[str]]) -> list[list[float]]:
        vectors = []
        for group in groups:
            reply = client.post("/v1/embeddings", json={"input": group})
            reply.raise_for_status()
            vectors.extend(item["embedding"] for item in reply.json()["data"])
        return vectors

    def in_process(groups: list[list[str]]) -> list[list[float]]:
        vectors = []
        for group in groups:
            vectors.extend(engine.embed(group)[0])
        return vectors

    def rate(fn: Callable[[list[list[str]]], list], groups: list[list[str]]) -> float:
        t0 = time.perf_counter()
        fn(groups)
        return len(texts) / (time.perf_counter() - t0)

    singles = [[text] for text in texts]
    # Warm-up, and a check that both paths compute the same vectors.
    a = via_service(batches[:1])
    b = in_process(batches[:1])
    agreement = min(float(np.dot(u, v)) for u, v in zip(np.asarray(a), np.asarray(b), strict=True))
    results: dict[str, list[float]] = {k: [] for k in ("svc1", "svc32", "dir1", "dir32")}
    for _ in range(runs):
        results["svc1"].append(rate(via_service, singles))
        results["svc32"].append(rate(via_service, batches))
        results["dir1"].append(rate(in_process, singles))
        results["dir32"].append(rate(in_process, batches))
    out: dict[str, float | str] = {k: statistics.median(v) for k, v in results.items()}
    tokens = sum(len(engine.tokenize(text)) for text in texts)
    out["tokens_per_text"] = tokens / len(texts)
    out["min_cosine"] = agreement
    print(
        f"  service: {out['svc1']:.0f} texts/s single, {out['svc32']:.0f} texts/s batched; "
        f"in-process: {out['dir1']:.0f} single, {out['dir32']:.0f} batched "
        f"({out['tokens_per_text']:.0f} tokens/text, min cosine service vs direct "
        f"{agreement:.6f})"
    )
    return out


def load_embedding_engine(settings: Settings) -> EmbeddingEngine:
    """An EmbeddingEngine configured as ``load_engine`` configures the service's."""
    cfg = settings.inference
    registry = models.load_registry(settings)
    model = registry.resolve("embedding", cfg.embedding_model)
    return EmbeddingEngine(
        model,
        registry.path(model),
        n_threads=cfg.n_threads or physical_cores(),
        max_tokens=cfg.embedding_max_tokens,
        batch=cfg.embedding_batch_tokens,
    )


# -- helpers and report --------------------------------------------------------------------


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def median(values: Iterator[float] | list[float]) -> float:
    return statistics.median(list(values))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def pct(value: float) -> str:
    return f"{value * 100:+.1f}%"


def overhead(measured: float, baseline: float) -> float:
    return (measured - baseline) / baseline


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(chat: dict, conv: dict, conc: dict, emb: dict) -> list[list[str]]:
    """Rows of: measurement, service, baseline, ratio, target, result."""
    rows = []
    if chat:
        n = chat["samples"]
        ttft_over = overhead(chat["service_ttft"], chat["direct_ttft"])
        # (service - direct) / direct as for TTFT: negative means the service decodes slower.
        tps_over = overhead(chat["service_tps"], chat["direct_tps"])
        rows += [
            [
                f"Chat TTFT ({chat['prompt_tokens']} prompt tokens, cold), service vs direct, "
                f"median of {n}",
                ms(chat["service_ttft"]),
                ms(chat["direct_ttft"]),
                pct(ttft_over),
                "≤ +5%",
                verdict(ttft_over <= OVERHEAD_TARGET),
            ],
            [
                f"Chat decode tok/s ({chat['completion_tokens']:.0f} tokens), service vs direct, "
                f"median of {n}",
                f"{chat['service_tps']:.1f}",
                f"{chat['direct_tps']:.1f}",
                pct(tps_over),
                "≥ -5%",
                verdict(tps_over >= -OVERHEAD_TARGET),
            ],
            [
                f"Chat TTFT, best of {n}",
                ms(chat["service_ttft_best"]),
                ms(chat["direct_ttft_best"]),
                pct(overhead(chat["service_ttft_best"], chat["direct_ttft_best"])),
                "",
                "",
            ],
            [
                f"Chat decode tok/s, best of {n}",
                f"{chat['service_tps_best']:.1f}",
                f"{chat['direct_tps_best']:.1f}",
                pct(overhead(chat["service_tps_best"], chat["direct_tps_best"])),
                "",
                "",
            ],
            [
                "Chat last token → end of stream, service vs direct",
                ms(chat["service_tail"]),
                ms(chat["direct_tail"]),
                "",
                "",
                "",
            ],
        ]
    if conv:
        rows.append(
            [
                f"Turn-10 TTFT ({conv['prompt_tokens']} prompt tokens), warm vs cold "
                f"(cached tokens {conv['warm_cached']:.0f} vs {conv['cold_cached']:.0f})",
                ms(conv["warm_ttft"]),
                ms(conv["cold_ttft"]),
                f"{conv['ratio'] * 100:.0f}%",
                "≤ 30%",
                verdict(conv["ratio"] <= WARM_RATIO_TARGET),
            ]
        )
    if conc:
        base = conc[CONCURRENCY_LEVELS[0]]["tps"]
        for streams, row in conc.items():
            rows.append(
                [
                    f"{streams} concurrent stream(s) x {CONCURRENT_MAX_TOKENS} tokens: "
                    f"aggregate tok/s (TTFT p50 / p95)",
                    f"{row['tps']:.1f} ({ms(row['ttft_p50'])} / {ms(row['ttft_p95'])})",
                    f"{base:.1f}" if streams != CONCURRENCY_LEVELS[0] else "",
                    f"{row['tps'] / base:.2f}x" if streams != CONCURRENCY_LEVELS[0] else "",
                    "",
                    "",
                ]
            )
    if emb:
        rows += [
            [
                f"Embeddings texts/s, 1 per request ({EMBED_TEXTS} texts, "
                f"~{emb['tokens_per_text']:.0f} tokens each), service vs in-process",
                f"{emb['svc1']:.0f}",
                f"{emb['dir1']:.0f}",
                f"{emb['svc1'] / emb['dir1']:.2f}x",
                "",
                "",
            ],
            [
                f"Embeddings texts/s, {EMBED_BATCH} per request, service vs in-process",
                f"{emb['svc32']:.0f}",
                f"{emb['dir32']:.0f}",
                f"{emb['svc32'] / emb['dir32']:.2f}x",
                "",
                "",
            ],
            [
                f"Embeddings through the service, {EMBED_BATCH} per request vs 1 per request",
                f"{emb['svc32']:.0f}",
                f"{emb['svc1']:.0f}",
                f"{emb['svc32'] / emb['svc1']:.2f}x",
                "",
                "",
            ],
        ]
    return rows


HEADER = ["Measurement", "Service", "Baseline", "Ratio / overhead", "Target", "Result"]


def record(setup: list[list[str]], rows: list[list[str]], runs: int, notes: list[str]) -> None:
    append_to_doc(
        SECTION,
        setup_table(setup),
        f'Medians of {runs} runs; "Baseline" is what the ratio compares against.',
        markdown_table(HEADER, rows),
        notes_block(notes),
    )


NOTES = [
    "Chat: streaming `/v1/chat/completions` from a real `python -m appliance inference` "
    "child vs `llama_cpp.Llama.create_chat_completion(stream=True)` in the benchmark "
    "process, same model file, n_ctx, n_threads and n_batch, temperature 0, same seed; "
    "run order alternates. TTFT is request sent → first non-empty content chunk, decode "
    "tok/s is (tokens - 1) / (first → last content chunk). Every run's prompt differs "
    "from earlier ones in its first words, so neither path reuses a cached prefix "
    "(cold TTFT); one warm-up request per path is discarded. On a small CPU box the "
    "benchmark's own HTTP/SSE client shares the cores with the service.",
    "Chat last token → end of stream: the time between the last content chunk and "
    "`[DONE]`. At the time of writing it is mostly the engine saving the sequence's "
    "state into the prefix RAM cache before it emits the finish chunk.",
    "Conversation: turns 1-9 go through the service first (16 tokens each), then turn 10 "
    "is timed (warm); cold is the same ten turns with a system prompt that differs at "
    "its first word. Cached tokens are `usage.prompt_tokens_details.cached_tokens` from "
    "the final usage chunk.",
    "Concurrency: the chat engine generates one sequence at a time today, so aggregate "
    "tokens/s stays about flat as streams are added and queued streams' TTFT grows "
    "with the queue. This is the baseline for the continuous-batching work. Every "
    "stream comes from its own `X-Appliance-Account`; the service runs with "
    "`APPLIANCE_INFERENCE__QUEUE_SIZE=64`.",
    "Embeddings: the same deterministic sentences of varied length, one per request vs "
    f"{EMBED_BATCH} per request (JSON float vectors), and `EmbeddingEngine.embed` "
    "in the benchmark process for reference.",
]


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True, wait_idle=True)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--max-tokens", type=int, default=CHAT_MAX_TOKENS, help="tokens per chat answer"
    )
    parser.add_argument(
        "--only",
        default="chat,conversation,concurrency,embeddings",
        help="comma-separated subset of: chat, conversation, concurrency, embeddings",
    )
    parser.add_argument(
        "--force-record",
        action="store_true",
        help="with --record, record even a run that other processes disturbed heavily",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = only - {"chat", "conversation", "concurrency", "embeddings"}
    if unknown:
        parser.error(f"unknown --only parts: {', '.join(sorted(unknown))}")

    # A SIGTERM must still run the finally blocks that stop the child service.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    busy_before = busy_at_start(args)
    if busy_before > 0.15:
        print(f"warning: the machine is {busy_before:.0%} busy before the start: noisy numbers")
    others = OthersLoad()
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        key = vault.read_secret(settings, "inference_key")
        machine = machine_info()
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

        service = start_inference(settings, APPLIANCE_INFERENCE__QUEUE_SIZE="64")
        stack.callback(service.stop)  # runs before the temporary dir is removed
        client = stack.enter_context(
            httpx.Client(base_url=service.url, headers=auth(key), timeout=600)
        )
        health = client.get("/healthz").json()
        rss_start = rss_mb(service.process.pid)
        rss_end = None
        print(
            f"service {service.url}: chat {health['chat_model']} (n_ctx {health['n_ctx']}, "
            f"{health['device']}), embeddings {health['embedding_model']}"
        )
        print(
            f"machine: {machine['cpu']}, {machine['cores']} cores, llama-cpp-python "
            f"{machine['llama_cpp']}, GPU offload supported: {machine['gpu_offload']}; {date}"
        )

        chat = conv = emb = {}
        conc: dict = {}
        engine_cfg: dict[str, Any] = {}
        try:
            if "chat" in only:
                print(f"\n[1/4] chat: service vs llama-cpp-python direct, {args.runs} runs")
                llama, engine_cfg = load_direct_llama(settings, health)
                try:
                    chat = bench_chat(client, llama, args.runs, args.max_tokens)
                finally:
                    llama.close()
                    del llama
            if "conversation" in only:
                print(f"\n[2/4] 10-turn conversation: warm vs cold turn 10, {args.runs} runs")
                conv = bench_conversation(client, args.runs)
            if "concurrency" in only:
                print(f"\n[3/4] concurrent streams {CONCURRENCY_LEVELS}, {args.runs} runs each")
                conc = bench_concurrency(service.url, key, args.runs)
            if "embeddings" in only:
                print(f"\n[4/4] embeddings, {args.runs} runs")
                engine = load_embedding_engine(settings)
                emb = bench_embeddings(client, engine, args.runs)
                del engine
        except Exception:
            print(f"\nservice log (tail):\n{service.log_tail()}", file=sys.stderr)
            raise
        finally:
            rss_end = rss_mb(service.process.pid)
            client.close()
            service.stop()

    # Whatever the CPUs did beyond this process and the service: other tenants' noise.
    elapsed, others_share = others.elapsed(), others.share()
    rows = build_rows(chat, conv, conc, emb)
    threads = engine_cfg.get("n_threads", settings.inference.n_threads or physical_cores())
    setup = [
        *date_code_machine(date, machine),
        [
            "llama-cpp-python",
            f"{machine['llama_cpp']}, GPU offload supported: {machine['gpu_offload']} "
            f"(device {health['device']})",
        ],
        [
            "Chat model",
            f"{health['chat_model']} (n_ctx {health['n_ctx']}, {threads} threads, "
            f"n_batch {engine_cfg.get('n_batch', min(512, health['n_ctx']))})",
        ],
        ["Embedding model", str(health["embedding_model"])],
        ["Chat answers", f"{args.max_tokens} tokens max, temperature 0, seed {SEED}"],
    ]
    if chat:
        setup.append(["Same text service vs direct", chat["same_text"]])
    setup += [
        [
            "Service RSS",
            f"{rss_start or 0:.0f} MB after start, {rss_end or 0:.0f} MB at the end",
        ],
        [
            "Other load on the CPUs",
            f"{busy_before:.0%} before the start, {others_share:.0%} during the run "
            f"({elapsed:.0f} s)",
        ],
    ]
    print(f"\nResults (medians of {args.runs} runs; {date}; {elapsed:.0f} s in all)\n")
    width = max(len(name) for name, _ in setup)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in setup) + "\n")
    print(text_table(HEADER, rows))
    notes = list(NOTES)
    flag_noise(notes, busy_before, others_share)
    if args.record and others_share > UNUSABLE_SHARE and not args.force_record:
        print(
            f"not recording: other processes used {others_share:.0%} of the CPUs, which "
            "distorts llama.cpp's timings far beyond the targets; rerun on a quiet machine "
            "(--wait-idle helps) or pass --force-record"
        )
    elif args.record:
        record(setup, rows, args.runs, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
