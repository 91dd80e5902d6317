"""Benchmark chat end to end: ``/v1`` of the web app with retrieval on and off vs inference.

Usage::

    .venv/bin/python scripts/bench/chat.py [--requests 20] [--max-tokens 32] [--record]

One process, one run, on a temporary data dir (bundled models installed, ``initialise``):

- a real ``python -m appliance inference`` child and a real ``python -m appliance web``
  child (both on free loopback ports, the web pointed at the inference service through the
  data dir's ``appliance.toml``; billing stays off, the default);
- an account (``accounts.create_user``) whose knowledge base holds ``--chunks`` synthetic
  passages with vectors (scripts/bench/retrieval.py's corpus and write path: the first
  ``--real`` passages embedded for real with the bundled embedding model in this process,
  the rest calibrated near-duplicate vectors), an instance (knowledge on, top_k 5, a fixed
  system prompt) and an inference-scope key bound to it (``auth.create_key``); a second
  account with ``--small-chunks`` passages for the compose-only row.

End to end, with the official ``openai`` client (streaming, ``include_usage``), in rounds:
each round asks one new question from the corpus' queries in four modes, in an order that
rotates every round. The inference service runs with prefix reuse off, so no mode finds
another's identical prompt cached and differences can be taken per question:

- ``inference, plain prompt``: the inference service's own ``/v1/chat/completions`` with
  exactly the messages the web sends with knowledge off (system prompt + question);
- ``web /v1, knowledge off``: the web app with ``"appliance": {"knowledge": false}``;
- ``inference, prompt with passages``: the inference service with exactly the messages
  the web sends with knowledge on (``chat.compose`` run here first, untimed);
- ``web /v1, knowledge on``: the web app, retrieval on.

TTFT is ``create()`` called → first non-empty content chunk; tokens/s is
(completion tokens - 1) / (first → last content chunk).

Then ``appliance.chat.service.compose`` itself, in this process against the same inference
service and database, for the same kind of request with knowledge on and off (p50/p95),
and the retrieval steps one by one (query embedding over HTTP, FTS5 BM25, vec0 KNN, chunk
rows, the ``/tokenize`` call of prompt assembly) to show where the time goes, and compose
again with the inference client's HTTP clients sharing one SSL context (what-if).

``--record`` appends the tables to docs/benchmarks.md under "Chat (end to end)".
Exit status is 0 even when the target is missed; PASS/FAIL is in the table.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from unittest import mock

import httpx
import openai
from common import (
    OthersLoad,
    bench_data_dir,
    bench_parser,
    busy_at_start,
    date_code_machine,
    flag_noise,
    machine_info,
    percentile,
    print_tables,
    record_tables,
    run_main,
    start_inference,
    start_web,
)
from retrieval import build_corpus, embed_corpus, ingest_tier

from appliance import vault
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import prompt
from appliance.chat import service as chat
from appliance.db import open_db
from appliance.inference.client import ACCOUNT_HEADER, InferenceClient
from appliance.inference.engine import load_engine
from appliance.instances import service as instances
from appliance.instances.service import chat_models
from appliance.knowledge import search as kb_search
from appliance.knowledge.store import KnowledgeStore

SECTION = "## Chat (end to end) (scripts/bench/chat.py)"

SEED = 20240611
CHUNKS = 10_000
SMALL_CHUNKS = 1_000
REAL = 1_000  # passages embedded for real; the rest are calibrated variants
REQUESTS = 30  # timed requests per mode
WARMUP = 3  # discarded requests per mode
MAX_TOKENS = 32
COMPOSE_RUNS = 100  # compose calls per mode and knowledge base
TOP_K = 5
TARGET_MS = 50.0
SYSTEM_PROMPT = (
    "You are the assistant of a small business. Answer briefly and in plain English, "
    "using the team's documents when they are relevant."
)
MODES = ("direct_plain", "web_off", "direct_rag", "web_on")
MODE_NAMES = {
    "direct_plain": "inference service alone, plain prompt",
    "web_off": "web /v1, knowledge off",
    "direct_rag": "inference service alone, prompt with passages",
    "web_on": "web /v1, knowledge on",
}


# -- services and data ---------------------------------------------------------------------


@dataclass
class Tenant:
    account_id: str
    user_id: str
    instance: instances.Instance
    key: str
    chunks: int


def make_tenant(db, settings, email: str, name: str, now: datetime, chunks: int) -> Tenant:
    user, account = accounts.create_user(db, email, now, account_name=name)
    instance = instances.create(
        db,
        account.id,
        "owner",
        {
            "name": "assistant",
            "system_prompt": SYSTEM_PROMPT,
            "voice": False,
            "knowledge": True,
            "top_k": TOP_K,
            "max_tokens": MAX_TOKENS,
        },
        models=chat_models(settings),
        max_tokens_cap=settings.inference.max_tokens,
        now=now,
    )
    _, secret = auth.create_key(
        db,
        user_id=user.id,
        account_id=account.id,
        name="bench",
        scope="inference",
        now=now,
        instance_id=instance.id,
    )
    return Tenant(account.id, user.id, instance, secret, chunks)


# -- end to end ----------------------------------------------------------------------------


@dataclass
class Stream:
    ttft: float
    tps: float
    tokens: int
    prompt_tokens: int


def timed_stream(client: openai.OpenAI, model: str, messages: list[dict], **extra) -> Stream:
    t_first = None
    t_last = 0.0
    pieces = 0
    usage = None
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        seed=1234,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                now = time.perf_counter()
                t_first = now if t_first is None else t_first
                t_last = now
                pieces += 1
    if t_first is None:
        raise RuntimeError("the stream produced no text")
    tokens = usage.completion_tokens if usage else pieces
    span = t_last - t_first
    return Stream(
        ttft=t_first - t0,
        tps=(tokens - 1) / span if tokens > 1 and span > 0 else float("nan"),
        tokens=tokens,
        prompt_tokens=usage.prompt_tokens if usage else 0,
    )


def bench_end_to_end(
    db,
    settings,
    inference: InferenceClient,
    direct: openai.OpenAI,
    web: openai.OpenAI,
    chat_model: str,
    tenant: Tenant,
    questions: list[str],
    requests: int,
    log,
) -> dict[str, list[Stream]]:
    results: dict[str, list[Stream]] = {mode: [] for mode in MODES}
    headers = {ACCOUNT_HEADER: tenant.account_id}  # as the web's requests carry

    def composed(question: str, knowledge: bool) -> list[dict]:
        return chat.compose(
            db,
            settings,
            inference,
            tenant.account_id,
            tenant.instance,
            [{"role": "user", "content": question}],
            datetime.now(UTC),
            knowledge=knowledge,
            max_tokens=MAX_TOKENS,
        ).payload["messages"]

    for r in range(WARMUP + requests):
        # The same question in all four modes (prefix reuse is off in the service, so
        # none of them finds another's prompt cached); the order rotates every round.
        question = questions[r]
        user = [{"role": "user", "content": question}]
        plain, with_passages = composed(question, False), composed(question, True)
        order = MODES[r % 4 :] + MODES[: r % 4]
        for mode in order:
            if mode == "direct_plain":
                result = timed_stream(direct, chat_model, plain, extra_headers=headers)
            elif mode == "direct_rag":
                result = timed_stream(direct, chat_model, with_passages, extra_headers=headers)
            elif mode == "web_off":
                result = timed_stream(
                    web, "assistant", user, extra_body={"appliance": {"knowledge": False}}
                )
            else:
                result = timed_stream(web, "assistant", user)
            if r >= WARMUP:
                results[mode].append(result)
        if r == WARMUP - 1:
            log(f"  {WARMUP} warm-up rounds done")
        elif r >= WARMUP and (r - WARMUP + 1) % 5 == 0:
            log(f"  {r - WARMUP + 1}/{requests} rounds")
    return results


# -- compose and its steps -----------------------------------------------------------------


def bench_compose(
    db, settings, inference: InferenceClient, tenant: Tenant, questions: list[str], runs: int
) -> dict[str, list[float]]:
    """Milliseconds of ``chat.compose`` (knowledge on / off) and of the retrieval steps."""
    store = KnowledgeStore(db)
    depth = max(TOP_K * 4, 20)
    times: dict[str, list[float]] = {
        name: []
        for name in (
            "compose_on",
            "compose_off",
            "embed",
            "bm25",
            "knn",
            "rows",
            "tokenize_on",
            "tokenize_off",
            "assemble_on",
        )
    }
    passages_tokens: list[int] = []
    instance = tenant.instance

    def clock(name: str, fn):
        t = time.perf_counter()
        value = fn()
        times[name].append((time.perf_counter() - t) * 1000)
        return value

    for i in range(runs):
        question = questions[i % len(questions)]
        conversation = [{"role": "user", "content": question}]
        now = datetime.now(UTC)
        modes = (True, False) if i % 2 == 0 else (False, True)
        for knowledge in modes:
            result = clock(
                "compose_on" if knowledge else "compose_off",
                lambda k=knowledge, c=conversation, n=now: chat.compose(
                    db,
                    settings,
                    inference,
                    tenant.account_id,
                    instance,
                    c,
                    n,
                    knowledge=k,
                    max_tokens=MAX_TOKENS,
                ),
            )
            if knowledge:
                passages_tokens.append(result.prompt_tokens)
        # The steps of the knowledge-on path, one by one (what search.search and
        # prompt.assemble do inside compose).
        vector = clock(
            "embed", lambda q=question: inference.embed([q], account_id=tenant.account_id)[0]
        )
        bm25 = clock(
            "bm25", lambda q=question: store.bm25(tenant.account_id, kb_search.fts_query(q), depth)
        )
        knn = clock("knn", lambda v=vector: store.nearest(tenant.account_id, v, depth))
        scores: dict[int, float] = {}
        for ids in (bm25, knn):
            for rank, chunk_id in enumerate(ids):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (kb_search.RRF_K + rank + 1)
        best = sorted(scores, key=lambda c: scores[c], reverse=True)[:TOP_K]
        rows = clock("rows", lambda b=best: store.chunk_rows(b, tenant.account_id))
        passages = [
            prompt.Passage(n, rows[c]["document_id"], rows[c]["filename"], rows[c]["text"])
            for n, c in enumerate(best, start=1)
            if c in rows
        ]
        texts_on = [SYSTEM_PROMPT, prompt.PASSAGES_HEADER, *(p.render() for p in passages)]
        clock(
            "tokenize_on", lambda t=[*texts_on, question]: inference.count_tokens(t, model="chat")
        )
        clock(
            "tokenize_off",
            lambda q=question: inference.count_tokens(
                [SYSTEM_PROMPT, prompt.PASSAGES_HEADER, q], model="chat"
            ),
        )
        counts = inference.count_tokens([*texts_on, question], model="chat")
        clock(
            "assemble_on",
            lambda p=passages, c=counts, q=question: prompt.assemble(
                SYSTEM_PROMPT,
                p,
                [{"role": "user", "content": q}],
                budget=instance.context_budget - MAX_TOKENS,
                count=lambda texts, c=c: c,
            ),
        )
    times["prompt_tokens_on"] = [float(t) for t in passages_tokens]
    return times


def bench_compose_shared_ssl(
    db, settings, inference: InferenceClient, tenant: Tenant, questions: list[str], runs: int
) -> dict[str, list[float]]:
    """What-if: ``compose`` when the inference client's per-call ``httpx.Client`` reuses one
    SSL context (building the default one loads the CA bundle: ~16 ms a client here)."""
    context = httpx.create_ssl_context()
    times: dict[str, list[float]] = {"compose_on_shared": [], "compose_off_shared": []}
    with mock.patch.object(httpx, "Client", functools.partial(httpx.Client, verify=context)):
        for i in range(runs):
            conversation = [{"role": "user", "content": questions[i % len(questions)]}]
            for knowledge in (True, False) if i % 2 == 0 else (False, True):
                t = time.perf_counter()
                chat.compose(
                    db,
                    settings,
                    inference,
                    tenant.account_id,
                    tenant.instance,
                    conversation,
                    datetime.now(UTC),
                    knowledge=knowledge,
                    max_tokens=MAX_TOKENS,
                )
                name = "compose_on_shared" if knowledge else "compose_off_shared"
                times[name].append((time.perf_counter() - t) * 1000)
    return times


# -- report --------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:.1f}"


def e2e_rows(results: dict[str, list[Stream]]) -> list[list[str]]:
    rows = []
    for mode in MODES:
        runs = results[mode]
        ttft = [r.ttft * 1000 for r in runs]
        tps = [r.tps for r in runs if r.tps == r.tps]
        rows.append(
            [
                MODE_NAMES[mode],
                str(len(runs)),
                f"{percentile([r.prompt_tokens for r in runs], 50):.0f}",
                fmt_ms(percentile(ttft, 50)),
                fmt_ms(percentile(ttft, 95)),
                f"{percentile(tps, 50):.1f}" if tps else "n/a",
                f"{percentile([r.tokens for r in runs], 50):.0f}",
            ]
        )
    return rows


E2E_HEADER = [
    "Mode",
    "Requests",
    "Prompt tokens p50",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "Decode tok/s p50",
    "Completion tokens p50",
]


def compose_rows(composes: dict[int, dict[str, list[float]]]) -> list[list[str]]:
    rows = []
    for chunks, times in sorted(composes.items()):
        for name, label in (
            ("compose_off", "compose, knowledge off"),
            ("compose_on", "compose, knowledge on"),
            ("compose_off_shared", "what-if: compose, knowledge off, one SSL context"),
            ("compose_on_shared", "what-if: compose, knowledge on, one SSL context"),
            ("embed", "step: query embedding (HTTP /v1/embeddings)"),
            ("bm25", "step: FTS5 BM25 leg (store.bm25)"),
            ("knn", "step: vec0 KNN leg (store.nearest)"),
            ("rows", "step: chunk rows (store.chunk_rows)"),
            ("tokenize_on", "step: /tokenize, with passages (HTTP)"),
            ("tokenize_off", "step: /tokenize, without passages (HTTP)"),
            ("assemble_on", "step: prompt.assemble (counts given)"),
        ):
            values = times.get(name)
            if not values:
                continue
            rows.append(
                [
                    f"{chunks:,}",
                    label,
                    fmt_ms(percentile(values, 50)),
                    fmt_ms(percentile(values, 95)),
                ]
            )
    return rows


COMPOSE_HEADER = ["Chunks in the KB", "Step", "p50 ms", "p95 ms"]


def target_rows(
    results: dict[str, list[Stream]], composes: dict[int, dict[str, list[float]]], chunks: int
) -> list[list[str]]:
    times = composes[chunks]
    on50 = percentile(times["compose_on"], 50)
    added = on50 - percentile(times["compose_off"], 50)

    def paired(mode: str, baseline: str) -> float:
        """Median over questions of mode's TTFT minus baseline's (same question), ms."""
        pairs = zip(results[mode], results[baseline], strict=True)
        return percentile([(a.ttft - b.ttft) * 1000 for a, b in pairs], 50)

    web_on_over = paired("web_on", "direct_rag")
    rows = [
        [
            f"compose with knowledge on (retrieval + prompt assembly, all of it), p50, "
            f"{chunks:,} chunks",
            f"{on50:.1f} ms",
            f"≤ {TARGET_MS:.0f} ms",
            "PASS" if on50 <= TARGET_MS else "FAIL",
        ],
        [
            "compose knowledge on - off (what retrieval adds to assembly), p50",
            f"{added:+.1f} ms",
            f"≤ {TARGET_MS:.0f} ms",
            "PASS" if added <= TARGET_MS else "FAIL",
        ],
        [
            "end to end: TTFT web knowledge on - inference alone with the same prompt, "
            "median of per-question differences",
            f"{web_on_over:+.1f} ms",
            f"≤ {TARGET_MS:.0f} ms",
            "PASS" if web_on_over <= TARGET_MS else "FAIL",
        ],
        [
            "end to end: TTFT web knowledge off - inference alone with the same prompt, "
            "median of per-question differences",
            f"{paired('web_off', 'direct_plain'):+.1f} ms",
            "",
            "",
        ],
        [
            "end to end: TTFT web knowledge on - web knowledge off, median of per-question "
            "differences (includes prefilling the passages)",
            f"{paired('web_on', 'web_off'):+.1f} ms",
            "",
            "",
        ],
    ]
    if "compose_on_shared" in times:
        shared = percentile(times["compose_on_shared"], 50)
        rows.append(
            [
                "what-if: compose with knowledge on, HTTP clients sharing one SSL context, p50",
                f"{shared:.1f} ms",
                f"≤ {TARGET_MS:.0f} ms",
                "PASS" if shared <= TARGET_MS else "FAIL",
            ]
        )
    return rows


TARGET_HEADER = ["Measurement", "Measured", "Target", "Result"]


NOTES = [
    "Same run, same process: each round asks one question (the retrieval benchmark's "
    "labelled queries, a new one every round) in all four modes, in an order that rotates "
    f"every round; {WARMUP} warm-up rounds are discarded. The inference service runs with "
    "prefix reuse off (`inference.prefix_cache_entries = 0`) so "
    "that no mode finds another's identical prompt cached: every prompt is prefilled in "
    "full (cold TTFT). Streaming through the official `openai` client with "
    "`stream_options.include_usage`, temperature 0. TTFT is `create()` called -> first "
    "non-empty content chunk; decode tok/s is (completion tokens - 1) / (first -> last "
    "content chunk).",
    '"Inference service alone" sends exactly the messages the web sends: `chat.compose` '
    "is run in the benchmark process first (untimed) with knowledge off or on, and its "
    "messages go to the inference service's own `/v1/chat/completions` with the same "
    "account header (equal prompt tokens in the table confirm it). So web - alone with "
    "the same prompt is what the web adds (key check, instance lookup, compose, relaying "
    "the SSE), while web knowledge on - off also contains the model prefilling ~400 more "
    "prompt tokens, which is not retrieval cost.",
    "compose: `appliance.chat.service.compose` in the benchmark process, against the same "
    "(idle) inference service over HTTP and the same database, knowledge on and off "
    "alternately. The steps below it are timed separately, one after the other, for the "
    "same question. The what-if rows run the same compose calls with `httpx.Client` "
    "patched, in this process only, to reuse one SSL context "
    "(`verify=httpx.create_ssl_context()` made once).",
    "The bench process, the web, the inference service and other engineers' processes "
    "share the CPUs: end-to-end TTFT differences of tens of ms are within noise on this "
    "box; the compose timings are the direct measure.",
]


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, wait_idle=True)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help="chunks in the main KB")
    parser.add_argument(
        "--small-chunks", type=int, default=SMALL_CHUNKS, help="chunks in the compose-only KB"
    )
    parser.add_argument("--real", type=int, default=REAL, help="passages embedded for real")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed requests a mode")
    parser.add_argument("--compose-runs", type=int, default=COMPOSE_RUNS)
    args = parser.parse_args(argv)
    questions_needed = WARMUP + args.requests
    if args.small_chunks and args.small_chunks <= questions_needed:
        parser.error("--small-chunks must exceed the number of questions (0 turns it off)")
    if args.chunks <= max(questions_needed, args.small_chunks):
        parser.error("--chunks must exceed --small-chunks and the number of questions")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    def log(message: str) -> None:
        print(message, flush=True)

    busy_before = busy_at_start(args)
    load_before = os.getloadavg()
    others = OthersLoad()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, None)
        data_dir = settings.paths.data_dir
        machine = machine_info()

        log(f"\n[1/5] corpus: {args.chunks} passages, {questions_needed} questions")
        corpus = build_corpus(SEED, args.chunks, questions_needed, args.real)
        engine = load_engine(settings).embedding
        model_id = engine.model.id
        emb = embed_corpus(corpus, engine, SEED, log)
        del engine
        gc.collect()

        log("\n[2/5] accounts, instances, keys and knowledge bases")
        db = open_db(settings)
        stack.callback(db.close)
        now = datetime.now(UTC)
        tenants = [make_tenant(db, settings, "a@bench.example", "A", now, args.chunks)]
        if args.small_chunks:
            tenants.append(
                make_tenant(db, settings, "b@bench.example", "B", now, args.small_chunks)
            )
        store = KnowledgeStore(db)
        store.ensure_vectors(emb.vectors.shape[1], model_id)
        for tenant in tenants:
            t = time.perf_counter()
            ingest_tier(
                db,
                store,
                corpus,
                emb.vectors,
                tenant.chunks,
                [(tenant.account_id, tenant.user_id)],
                model_id,
                SEED,
                lambda message: log(message),
            )
            log(f"  {tenant.chunks} chunks written in {time.perf_counter() - t:.1f} s")

        log("\n[3/5] services")
        # No prefix reuse: every request is cold, so the four modes can ask the same
        # question (paired comparisons) without one finding another's prompt cached.
        service = start_inference(settings, APPLIANCE_INFERENCE__PREFIX_CACHE_ENTRIES="0")
        stack.callback(service.stop)
        # The web finds the inference service through the data dir's appliance.toml.
        (data_dir / "appliance.toml").write_text(f'[inference]\nurl = "{service.url}"\n')
        web = start_web(data_dir)
        stack.callback(web.stop)
        health = httpx.get(service.url + "/healthz", timeout=5).json()
        chat_model = health["chat_model"]
        log(f"  inference {service.url} ({chat_model}), web {web.url}")
        inference_key = vault.read_secret(settings, "inference_key")
        inference = InferenceClient(service.url, inference_key)
        direct = openai.OpenAI(
            base_url=service.url + "/v1",
            api_key=inference_key,
            max_retries=0,
            timeout=120,
        )
        main_tenant = tenants[0]
        via_web = openai.OpenAI(
            base_url=web.url + "/v1", api_key=main_tenant.key, max_retries=0, timeout=120
        )
        questions = [q.text for q in corpus.queries]
        try:
            log(
                f"\n[4/5] end to end: {len(MODES)} modes x ({WARMUP} warm-up + "
                f"{args.requests}) requests, {MAX_TOKENS} tokens max"
            )
            results = bench_end_to_end(
                db,
                settings,
                inference,
                direct,
                via_web,
                chat_model,
                main_tenant,
                questions,
                args.requests,
                log,
            )
            log(f"\n[5/5] compose: {args.compose_runs} calls per mode and knowledge base")
            composes = {}
            for tenant in tenants:
                bench_compose(db, settings, inference, tenant, questions, 5)  # warm-up
                composes[tenant.chunks] = bench_compose(
                    db, settings, inference, tenant, questions, args.compose_runs
                )
            composes[main_tenant.chunks].update(
                bench_compose_shared_ssl(
                    db, settings, inference, main_tenant, questions, args.compose_runs
                )
            )
        except Exception:
            log(f"\ninference log (tail):\n{service.log_tail()}")
            log(f"\nweb log (tail):\n{web.log_tail()}")
            raise
        finally:
            via_web.close()
            direct.close()
    elapsed, others_share = others.elapsed(), others.share()
    load_after = os.getloadavg()

    setup = [
        *date_code_machine(date, machine),
        [
            "Load",
            f"uptime load average {load_before[0]:.2f} / {load_before[1]:.2f} / "
            f"{load_before[2]:.2f} at the start, {load_after[0]:.2f} / {load_after[1]:.2f} / "
            f"{load_after[2]:.2f} at the end; other processes used {busy_before:.0%} of the "
            f"CPUs just before and {others_share:.0%} during the run ({elapsed:.0f} s)",
        ],
        [
            "Models",
            f"chat {chat_model} (n_ctx {health['n_ctx']}, {health['device']}), "
            f"embeddings {health['embedding_model']}",
        ],
        [
            "Knowledge base",
            f"{args.chunks:,} chunks (and {args.small_chunks:,} in a second account for the "
            f"compose row); retrieval.py's corpus, seed {SEED}, {emb.real:,} passages "
            "embedded for real, the rest calibrated near-duplicate vectors",
        ],
        [
            "Instance",
            f"knowledge on, top_k {TOP_K}, fixed system prompt, max_tokens {MAX_TOKENS}, "
            "temperature 0; billing off",
        ],
    ]
    tables = [
        (
            f"End to end, {args.chunks:,} chunks ({args.requests} requests a mode):",
            E2E_HEADER,
            e2e_rows(results),
        ),
        (
            f"`chat.service.compose` and its steps ({args.compose_runs} calls each):",
            COMPOSE_HEADER,
            compose_rows(composes),
        ),
        ("Target (retrieval + prompt assembly ≤ 50 ms p50 at 10k chunks):", TARGET_HEADER, None),
    ]
    tables[2] = (tables[2][0], TARGET_HEADER, target_rows(results, composes, args.chunks))
    print(f"\nResults ({date}; {elapsed:.0f} s in all)\n")
    width = max(len(name) for name, _ in setup)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in setup))
    print_tables(tables)
    notes = list(NOTES)
    flag_noise(notes, busy_before, others_share)
    if args.record:
        record_tables(SECTION, setup, tables, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
