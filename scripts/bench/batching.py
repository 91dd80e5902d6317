"""Benchmark continuous batching against answering one request at a time, in one process.

Usage::

    .venv/bin/python scripts/bench/batching.py [--data-dir DIR] [--streams 1,2,4,8,16]
        [--max-tokens N] [--parallel N] [--runs N] [--record]

Loads the configured chat model twice in this process as the ``BatchedChatEngine``, with
one slot ("sequential": ``inference.parallel = 1``) and with ``--parallel`` slots, each
behind the service's real ``Scheduler`` (fair queue, its own thread, events on an asyncio
queue), and for each number of concurrent streams measures, alternating the two:

- aggregate completion tokens/s: all streams' tokens / (first submit -> last finish);
- per-stream inter-token latency p50/p95: gaps between a stream's consecutive pieces of
  text, over every stream;
- time to first token of a late arrival, in a separate pass with ``--late-streams``
  streams (so that its prompt does not count in the throughput above): a request with a
  ~250-token prompt submitted once the first stream has produced a quarter of its tokens
  (the sequential engine queues it behind every stream; the batched one admits it into
  a free slot, or when one frees up).

Every stream has its own account and its own system prompt (differing in its first
word from every other measurement's), so no request reuses another's prefix. Streams
sample at temperature 0.7 with a fixed seed each and stop at ``--max-tokens`` or at the
end of the answer. Ratios compare the two engines measured in this process minutes apart.
``--record`` appends the table to docs/benchmarks.md. Before each measurement the
script waits (up to ``--idle-wait`` seconds) for other processes to leave the CPUs mostly
idle and reports how busy they were. Exit status is 0 even when a target is missed;
PASS/FAIL is in the table.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common import (
    append_to_doc,
    bench_parser,
    kept_data_dir,
    load_average,
    machine_info,
    markdown_table,
    percentile,
    setup_table,
    text_table,
    wait_until_idle,
)

from appliance.config import Settings
from appliance.inference import models
from appliance.inference.base import (
    Delta,
    Finish,
    gpu_offload_supported,
    physical_cores,
)
from appliance.inference.batching import BatchedChatEngine
from appliance.inference.chat_api import ChatRequest
from appliance.inference.sampling import GenerationParams
from appliance.inference.scheduler import DONE, Failed, Job, Scheduler

SECTION = "## Continuous batching (scripts/bench/batching.py)"
WORDS = [
    "Amber",
    "Birch",
    "Cedar",
    "Delta",
    "Ember",
    "Falcon",
    "Garnet",
    "Harbor",
    "Indigo",
    "Juniper",
    "Kestrel",
    "Lumen",
    "Meadow",
    "Nimbus",
    "Onyx",
    "Pebble",
    "Quartz",
    "Raven",
    "Sierra",
    "Tundra",
]
SUBJECTS = [
    "a dragon",
    "a lighthouse",
    "a robot",
    "a fox",
    "a sailor",
    "a baker",
    "a comet",
    "a violin",
    "a garden",
    "a train",
    "a wizard",
    "a river",
    "a mountain",
    "a clock",
    "a painter",
    "a bee",
    "an island",
    "a library",
]
LATE_PROMPT = "Summarise this text in one sentence. " + (
    "The committee met on Monday to review the budget, the contracts and the customer "
    "reports, and decided to postpone the decision until the next meeting. " * 8
)
TARGET_AT_8 = 1.5


@dataclass
class Stream:
    job: Job
    submitted: float
    times: list[float] = field(default_factory=list)
    finish: Finish | None = None
    failed: str | None = None


def messages(index: int, run: int, streams: int) -> list[dict[str, str]]:
    """A prompt no other measurement shares beyond the template's first few tokens."""
    word = WORDS[(index + 7 * run) % len(WORDS)]
    subject = SUBJECTS[index % len(SUBJECTS)]
    tag = f"{streams}.{run}.{index}"
    return [
        {"role": "system", "content": f"{tag} {word} is your name. You are a storyteller."},
        {"role": "user", "content": f"Write a long story about {subject}."},
    ]


def chat_request(
    msgs: list[dict[str, str]], max_tokens: int, seed: int, temperature: float = 0.7
) -> ChatRequest:
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=0.95, seed=seed)
    return ChatRequest(messages=msgs, params=params, stream=True, include_usage=True)


async def consume(stream: Stream) -> None:
    while True:
        event = await stream.job.events.get()
        if event is DONE:
            return
        if isinstance(event, Delta):
            stream.times.append(time.perf_counter())
        elif isinstance(event, Finish):
            stream.finish = event
        elif isinstance(event, Failed):
            stream.failed = event.message


async def measure(
    scheduler: Scheduler, n: int, max_tokens: int, run: int, *, late_arrival: bool = False
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    streams = []
    began = time.perf_counter()
    for i in range(n):
        job = Job(
            account=f"bench-{i}",
            payload=chat_request(messages(i, run, n), max_tokens, seed=1000 * run + i),
            loop=loop,
        )
        scheduler.submit(job)
        streams.append(Stream(job, time.perf_counter()))
    tasks = [asyncio.create_task(consume(s)) for s in streams]
    late = None
    if late_arrival:
        # Once the first stream has a quarter of its tokens (mid-generation).
        quarter = max(1, max_tokens // 4)
        while not any(len(s.times) >= quarter or s.finish or s.failed for s in streams):
            await asyncio.sleep(0.002)
        late = Stream(
            Job(
                account="bench-late",
                payload=chat_request(
                    [{"role": "user", "content": f"{n}.{run} {LATE_PROMPT}"}], 8, seed=run
                ),
                loop=loop,
            ),
            time.perf_counter(),
        )
        scheduler.submit(late.job)
        late_task = asyncio.create_task(consume(late))
    await asyncio.gather(*tasks)
    ended = time.perf_counter()
    if late is not None:
        await late_task
    errors = [s.failed for s in [*streams, *([late] if late else [])] if s.failed]
    if errors:
        raise RuntimeError(f"requests failed: {errors[:3]}")
    tokens = sum(s.finish.completion_tokens for s in streams)
    gaps = [b - a for s in streams for a, b in zip(s.times, s.times[1:], strict=False)]
    return {
        "tokens": tokens,
        "seconds": ended - began,
        "rate": tokens / (ended - began),
        "itl_p50": percentile(gaps, 50),
        "itl_p95": percentile(gaps, 95),
        "ttft": statistics.median(s.times[0] - s.submitted for s in streams),
        "late_ttft": late.times[0] - late.submitted if late and late.times else float("nan"),
    }


def served_engine(settings: Settings, threads: int) -> BatchedChatEngine:
    """The chat engine as the service runs it on a CPU: 8 slots, 8 cached prefixes, n_ctx 8192."""
    registry = models.load_registry(settings)
    model = registry.resolve("chat", settings.inference.chat_model)
    return BatchedChatEngine(
        model,
        registry.path(model),
        n_ctx=8192,
        n_threads=threads,
        n_gpu_layers=0,
        flash_attn=False,
        kv_cache_type="f16",
        parallel=8,
        prompt_chunk_tokens=settings.inference.prompt_chunk_tokens,
        prefix_cache_entries=8,
    )


def load_engines(settings: Settings, parallel: int, chunk: int):
    cfg = settings.inference
    registry = models.load_registry(settings)
    model = registry.resolve("chat", cfg.chat_model)
    path = registry.path(model)
    n_ctx = cfg.n_ctx or min(model.context_length or 8192, 8192)
    common = {
        "n_ctx": n_ctx,
        "n_threads": cfg.n_threads or physical_cores(),
        "n_gpu_layers": 0 if not gpu_offload_supported() else cfg.n_gpu_layers,
        "flash_attn": cfg.flash_attn,
        "kv_cache_type": cfg.kv_cache_type,
    }
    sequential, batched = (
        BatchedChatEngine(
            model,
            path,
            parallel=slots,
            prompt_chunk_tokens=chunk,
            prefix_cache_entries=cfg.prefix_cache_entries,
            **common,
        )
        for slots in (1, parallel)
    )
    return model, common, sequential, batched


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds == seconds else "-"


async def bench(args, sequential, batched: BatchedChatEngine) -> tuple[dict, dict]:
    """Throughput and latency per number of streams, then the late arrival's TTFT."""
    schedulers = {
        "sequential": Scheduler("sequential", sequential, queue_size=64, per_account=8),
        "batched": Scheduler("batched", batched, queue_size=64, per_account=8),
    }
    for scheduler in schedulers.values():
        scheduler.start()
    results: dict[int, dict[str, list[dict]]] = {}
    late: dict[str, list[dict]] = {}
    try:
        # Warm-up: one short request per engine, discarded.
        for scheduler in schedulers.values():
            await measure(scheduler, 1, 8, run=99)
        for run in range(args.runs):
            order = ["sequential", "batched"] if run % 2 == 0 else ["batched", "sequential"]
            passes = [(n, False) for n in args.streams] + [(args.late_streams, True)]
            for n, late_arrival in passes:
                for name in order:
                    busy = await asyncio.to_thread(wait_until_idle, args.idle_wait)
                    result = await measure(
                        schedulers[name], n, args.max_tokens, run, late_arrival=late_arrival
                    )
                    result["busy"] = busy
                    if late_arrival:
                        late.setdefault(name, []).append(result)
                    else:
                        results.setdefault(n, {}).setdefault(name, []).append(result)
                    print(
                        f"  run {run + 1} streams {n:>2} {name:<10} "
                        f"{result['rate']:7.1f} tok/s  itl p50 {ms(result['itl_p50'])} "
                        f"p95 {ms(result['itl_p95'])}  ttft {ms(result['ttft'])}"
                        + (f"  late ttft {ms(result['late_ttft'])}" if late_arrival else "")
                        + f"  (others busy {busy:.0%} before)",
                        flush=True,
                    )
    finally:
        for scheduler in schedulers.values():
            scheduler.stop()
    return results, late


def summarise(results: dict) -> tuple[list[str], list[list[str]], dict[int, float]]:
    header = [
        "Streams",
        "Sequential tok/s",
        "Batched tok/s",
        "Ratio",
        "ITL p50 / p95 sequential",
        "ITL p50 / p95 batched",
        "TTFT sequential",
        "TTFT batched",
        "Others' CPU use before",
    ]
    rows, ratios = [], {}
    for n, by_engine in sorted(results.items()):
        med = {name: medians(runs) for name, runs in by_engine.items()}
        seq, bat = med["sequential"], med["batched"]
        ratio = bat["rate"] / seq["rate"]
        ratios[n] = ratio
        rows.append(
            [
                str(n),
                f"{seq['rate']:.1f}",
                f"{bat['rate']:.1f}",
                f"{ratio:.2f}x",
                f"{ms(seq['itl_p50'])} / {ms(seq['itl_p95'])}",
                f"{ms(bat['itl_p50'])} / {ms(bat['itl_p95'])}",
                ms(seq["ttft"]),
                ms(bat["ttft"]),
                f"{max(seq['busy'], bat['busy']):.0%}",
            ]
        )
    return header, rows, ratios


def medians(runs: list[dict]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def summarise_late(late: dict, streams: int) -> tuple[list[str], list[list[str]]]:
    header = ["Engine", f"Late arrival TTFT ({streams} streams running)", "Others' CPU use"]
    rows = []
    for name in ("sequential", "batched"):
        med = medians(late[name])
        rows.append([name, ms(med["late_ttft"]), f"{med['busy']:.0%}"])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True)
    parser.add_argument("--streams", default="1,2,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=16, help="slots of the batched engine")
    parser.add_argument("--chunk", type=int, default=0, help="prompt chunk (0: the setting)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--late-streams", type=int, default=8, help="streams running when the late one comes"
    )
    parser.add_argument(
        "--idle-wait", type=float, default=60.0, help="seconds to wait for a quiet machine"
    )
    args = parser.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]

    settings = kept_data_dir(args.data_dir, "batching")
    chunk = args.chunk or settings.inference.prompt_chunk_tokens  # 0: by device
    info = machine_info()
    load_before = load_average()
    started = datetime.now(UTC)
    print(f"machine: {info}\nload average before: {load_before}")
    model, common, sequential, batched = load_engines(settings, args.parallel, chunk)
    results, late = asyncio.run(bench(args, sequential, batched))
    load_after = load_average()
    header, rows, ratios = summarise(results)
    late_header, late_rows = summarise_late(late, args.late_streams)
    print()
    print(text_table(header, rows))
    print()
    print(text_table(late_header, late_rows))
    verdict = ""
    if 8 in ratios:
        ok = ratios[8] >= TARGET_AT_8
        verdict = (
            f"{'PASS' if ok else 'FAIL'}: {ratios[8]:.2f}x at 8 streams (target {TARGET_AT_8}x)"
        )
        print(f"\n{verdict}")
    print(f"load average after: {load_after}")
    m = batched.metrics.averages()
    print(f"batched engine, last {len(batched.metrics.recent)} steps: {m}")
    if args.record:
        setup = [
            ["Date", started.strftime("%Y-%m-%d %H:%M UTC")],
            ["Machine", f"{info['cpu']} ({info['cores']}), no GPU used"],
            ["llama-cpp-python", info["llama_cpp"]],
            ["Commit", info["commit"]],
            ["Model", f"{model.id}, n_ctx {common['n_ctx']}, {common['n_threads']} threads"],
            ["Batched engine", f"{args.parallel} slots, prompt chunk {batched.chunk} tokens"],
            ["Streams", f"max_tokens {args.max_tokens}, temperature 0.7, {args.runs} run(s)"],
            ["Load average before / after", f"{load_before} / {load_after}"],
        ]
        append_to_doc(
            SECTION,
            setup_table(setup),
            markdown_table(header, rows),
            markdown_table(late_header, late_rows),
            f"{verdict}." if verdict else "",
        )
    batched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
