"""Benchmark the inference service side by side with llama.cpp's own ``llama-server``.

Usage::

    .venv/bin/python scripts/bench/vs_llama_server.py [--data-dir DIR] [--runs N]
        [--max-tokens N] [--streams N [N ...]] [--one-stream-only] [--sdist FILE] [--record]

Starts ``python -m appliance inference`` and ``llama-server`` (built by llama_server.py from
the installed llama-cpp-python's vendored llama.cpp) on the same GGUF with the same n_ctx,
slots (``inference.parallel``), threads and weight repacking, and measures both through the
official ``openai`` client, streaming, alternating which goes first in each run:

- one stream (greedy, ``--max-tokens``): TTFT, decode tok/s, inter-token gap p50/p95;
- for each count N of ``--streams`` (default 8), N concurrent streams (temperature 0.7,
  one seed each, each from its own account): aggregate completion tok/s (all tokens /
  first request -> last end) and TTFT p50/p95;
- and a late arrival: a ~250-token prompt sent once N - 1 running streams have each
  produced a quarter of their tokens (with N up to the slots, a slot is free in both
  servers): its TTFT, and the longest gap between two tokens of a running stream (the
  stall it costs them);
- prefill: one ~2000-token prompt, ``max_tokens`` 1: prompt tokens / TTFT;
- RSS of each process at the end, and the GPU memory each uses (nvidia-smi) on a GPU;
- from the service's ``/metrics``, its engine's steps during the one-stream runs: the
  milliseconds a step evaluates (from ``llama_decode`` to the end of its wait) and what is
  left between two evaluations (on a GPU, the time the device waits for Python).

The service offloads ``inference.n_gpu_layers`` layers; llama-server gets the same count
(``-ngl``) and links the same ggml libraries, so a CUDA build runs both on the GPU.

``--one-stream-only`` measures the first item alone, so many runs fit in a few minutes:
the one-stream decode ratio is the noisiest on a shared machine.

Every request starts with a tag no other request has, so no prefix cache helps either
side. Ratios are service / llama-server (above 1 is slower for times, faster for rates).
The machine's load before and during the run is reported: on a shared box the numbers are
noisy, the ratios less so because the two alternate.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import llama_server  # scripts/bench/llama_server.py
import openai
from common import (
    bench_data_dir,
    bench_parser,
    busy_fraction,
    code_version,
    cpu_busy_seconds,
    cpu_model,
    load_average,
    percentile,
    report_comparison,
    start_inference,
)

from appliance import vault
from appliance.inference import models
from appliance.inference.base import physical_cores
from appliance.inference.client import ACCOUNT_HEADER

SECTION = "## vs llama-server (scripts/bench/vs_llama_server.py)"
LATE_PROMPT = "Summarise this text in one sentence. " + (
    "The committee met on Monday to review the budget, the contracts and the customer "
    "reports, and decided to postpone the decision until the next meeting. " * 8
)
LONG_PROMPT = "Summarise this report in one sentence. " + " ".join(
    f"Item {i}: the warehouse in district {i % 17} shipped {i * 13 % 97} crates of "
    f"apples, pears and plums to the market on day {i % 30}."
    for i in range(60)
)


@dataclass
class Result:
    ttft: float
    tokens: int
    gaps: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    prompt_tokens: int = 0

    @property
    def decode_tps(self) -> float:
        span = sum(self.gaps)
        return len(self.gaps) / span if span > 0 else float("nan")


@dataclass
class Target:
    name: str
    client: openai.OpenAI
    model: str
    pid: int
    #: What each request adds (``create``'s keyword arguments); None: the account header.
    extra: dict | None = None


def stream(
    target: Target,
    messages: list[dict],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 1,
    account: str = "bench",
    progress: threading.Event | None = None,
    quarter: int = 0,
) -> Result:
    """One streaming chat completion, timed on the client side."""
    start = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    chunks = 0
    usage = None
    reply = target.client.chat.completions.create(
        model=target.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=0.95,  # both servers' samplers otherwise use their own defaults
        seed=seed,
        stream=True,
        stream_options={"include_usage": True},
        **(
            target.extra
            if target.extra is not None
            else {"extra_headers": {ACCOUNT_HEADER: account}}
        ),
    )
    for chunk in reply:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
            chunks += 1
            if progress is not None and chunks == quarter:
                progress.set()
    end = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{target.name}: the stream produced no text")
    return Result(
        ttft=first - start,
        tokens=usage.completion_tokens if usage else chunks,
        gaps=gaps,
        start=start,
        end=end,
        prompt_tokens=usage.prompt_tokens if usage else 0,
    )


def story(tag: str, index: int) -> list[dict]:
    return [
        {"role": "system", "content": f"{tag} You are a storyteller."},
        {"role": "user", "content": f"Write a long story about creature number {index}."},
    ]


ENGINE_COUNTERS = (
    "appliance_inference_batch_steps_total",
    "appliance_inference_batch_step_seconds_total",
    "appliance_inference_batch_decode_seconds_total",
)


def engine_counters(url: str, key: str) -> list[float]:
    """The service engine's steps, step seconds and evaluation seconds so far."""
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"}).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    return [float(values[name]) for name in ENGINE_COUNTERS]


def one_stream(target: Target, tag: str, max_tokens: int) -> dict:
    r = stream(target, story(tag, 0), max_tokens=max_tokens)
    return {"ttft": r.ttft, "tps": r.decode_tps, "gaps": r.gaps}


def sampled_stories(
    pool: ThreadPoolExecutor,
    target: Target,
    tag: str,
    max_tokens: int,
    count: int,
    progress: list[threading.Event] | None = None,
) -> list[Future]:
    """``count`` stories at temperature 0.7, one seed and one account each, on ``pool``;
    with ``progress``, stream i sets ``progress[i]`` at a quarter of its tokens."""
    return [
        pool.submit(
            stream,
            target,
            story(f"{tag}.{i}", i),
            max_tokens=max_tokens,
            temperature=0.7,
            seed=i + 1,
            account=f"bench-{i}",
            progress=progress[i] if progress else None,
            quarter=max_tokens // 4,
        )
        for i in range(count)
    ]


def concurrent(target: Target, tag: str, streams: int, max_tokens: int) -> dict:
    with ThreadPoolExecutor(streams) as pool:
        futures = sampled_stories(pool, target, tag, max_tokens, streams)
        results = [f.result() for f in futures]
    span = max(r.end for r in results) - min(r.start for r in results)
    return {
        "agg": sum(r.tokens for r in results) / span,
        "ttfts": [r.ttft for r in results],
    }


def late_arrival(target: Target, tag: str, streams: int, max_tokens: int) -> dict:
    """The late request's TTFT, and the longest any running stream waited between two
    tokens meanwhile (what evaluating the late prompt costs the others)."""
    running = streams - 1
    events = [threading.Event() for _ in range(running)]
    with ThreadPoolExecutor(streams) as pool:
        futures = sampled_stories(pool, target, tag, max_tokens, running, progress=events)
        for event in events:
            event.wait(120)
        late = stream(
            target,
            [{"role": "user", "content": f"{tag} late. {LATE_PROMPT}"}],
            max_tokens=8,
            account="bench-late",
        )
        others = [f.result() for f in futures]
    return {"ttft": late.ttft, "stall": max(max(r.gaps, default=0.0) for r in others)}


def prefill(target: Target, tag: str) -> tuple[float, int]:
    r = stream(target, [{"role": "user", "content": f"{tag} {LONG_PROMPT}"}], max_tokens=1)
    return r.prompt_tokens / r.ttft, r.prompt_tokens


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[8],
        help="concurrent streams (several: each count measured in turn)",
    )
    parser.add_argument(
        "--one-stream-only",
        action="store_true",
        help="measure one stream only (more runs in the time, for the decode ratio)",
    )
    parser.add_argument(
        "--sdist",
        type=Path,
        help="llama-cpp-python source archive to build llama-server from (default: from PyPI)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra APPLIANCE_* setting for the service (repeatable)",
    )
    args = parser.parse_args(argv)

    binary = llama_server.build(sdist=args.sdist)  # before the machine is measured
    busy_before = busy_fraction(2.0)
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        key = vault.read_secret(settings, "inference_key")
        extra = dict(item.split("=", 1) for item in args.env)
        service = start_inference(settings, APPLIANCE_INFERENCE__QUEUE_SIZE="64", **extra)
        stack.callback(service.stop)
        health = httpx.get(service.url + "/healthz", timeout=10).json()
        registry = models.load_registry(settings)
        model = registry.resolve("chat", settings.inference.chat_model)
        slots = int(extra.get("APPLIANCE_INFERENCE__PARALLEL", settings.inference.parallel))
        threads = (
            int(extra.get("APPLIANCE_INFERENCE__N_THREADS", 0))
            or settings.inference.n_threads
            or physical_cores()
        )
        repack = bool(health.get("cpu_repack") in (True, "on"))
        gpu_layers = int(health.get("gpu_layers") or 0)
        if gpu_layers and gpu_layers >= int(health.get("model_layers") or 0):
            gpu_layers = 999  # all of them, as the service
        peer = llama_server.start(
            binary,
            registry.path(model),
            n_ctx=health["n_ctx"],
            slots=slots,
            threads=threads,
            repack=repack,
            gpu_layers=gpu_layers,
            log_path=settings.paths.data_dir / "llama-server.log",
        )
        stack.callback(peer.stop)
        targets = [
            Target(
                "service",
                openai.OpenAI(base_url=service.url + "/v1", api_key=key, timeout=600),
                health["chat_model"],
                service.process.pid,
            ),
            Target(
                "llama-server",
                openai.OpenAI(base_url=peer.url + "/v1", api_key="none", timeout=600),
                "model",
                peer.process.pid,
            ),
        ]
        setup = (
            f"{cpu_model()}; {model.id}; n_ctx {health['n_ctx']}, {slots} slots, "
            f"{threads} threads, repack {'on' if repack else 'off'}, "
            f"{health.get('gpu_layers')}/{health.get('model_layers')} layers on the GPU; "
            f"llama-server {llama_server.installed_version()} on the wheel's ggml "
            f"({', '.join(llama_server.backends())})"
        )
        print(setup)
        results: dict[str, dict[str, list]] = {t.name: {} for t in targets}
        steps = [0.0, 0.0, 0.0]  # the service's one-stream steps, their seconds, evaluating
        for target in targets:  # warm-up, discarded
            stream(target, story(f"warm {target.name}", 0), max_tokens=8)
        busy0, t0 = cpu_busy_seconds(), time.monotonic()
        stamp = time.time_ns() % 10**8
        for run in range(args.runs):
            order = targets if run % 2 == 0 else targets[::-1]
            for target in order:
                tag = f"[{stamp}.{run}.{target.name}]"
                acc = results[target.name]
                counted = engine_counters(service.url, key)
                one = one_stream(target, f"{tag} one", args.max_tokens)
                if target.name == "service":
                    now = engine_counters(service.url, key)
                    steps[:] = [a + b - c for a, b, c in zip(steps, now, counted, strict=True)]
                acc.setdefault("ttft1", []).append(one["ttft"])
                acc.setdefault("tps1", []).append(one["tps"])
                acc.setdefault("gaps", []).extend(one["gaps"])
                if args.one_stream_only:
                    print(f"run {run + 1} {target.name}: {one['tps']:.1f} tok/s one")
                    continue
                aggregates = []
                for n in args.streams:
                    many = concurrent(target, f"{tag} many{n}", n, args.max_tokens)
                    acc.setdefault(f"agg{n}", []).append(many["agg"])
                    acc.setdefault(f"ttft{n}", []).extend(many["ttfts"])
                    late = late_arrival(target, f"{tag} late{n}", n, args.max_tokens)
                    acc.setdefault(f"late{n}", []).append(late["ttft"])
                    acc.setdefault(f"stall{n}", []).append(late["stall"])
                    aggregates.append(f"{many['agg']:.1f} agg at {n}")
                rate, prompt_tokens = prefill(target, f"{tag} long")
                acc.setdefault("prefill", []).append(rate)
                acc["prompt_tokens"] = [prompt_tokens]
                print(
                    f"run {run + 1} {target.name}: {one['tps']:.1f} tok/s one, "
                    f"{', '.join(aggregates)}, prefill {rate:.0f} tok/s"
                )
        elapsed = time.monotonic() - t0
        load = (cpu_busy_seconds() - busy0) / elapsed / (os.cpu_count() or 1)
        rss = {t.name: llama_server.rss_bytes(t.pid) / 2**20 for t in targets}
        vram = llama_server.vram_mib()

    # (measurement, key in the results, statistic, scale, format, unit)
    measures = [
        ("one stream TTFT", "ttft1", 50, 1000, ".1f", "ms"),
        ("one stream decode", "tps1", 50, 1, ".1f", "tok/s"),
        ("one stream inter-token p50", "gaps", 50, 1000, ".1f", "ms"),
        ("one stream inter-token p95", "gaps", 95, 1000, ".1f", "ms"),
    ]
    for n in args.streams:
        measures += [
            (f"{n} streams aggregate", f"agg{n}", 50, 1, ".1f", "tok/s"),
            (f"{n} streams TTFT p50", f"ttft{n}", 50, 1000, ".1f", "ms"),
            (f"{n} streams TTFT p95", f"ttft{n}", 95, 1000, ".1f", "ms"),
            (f"late arrival TTFT ({n - 1} running)", f"late{n}", 50, 1000, ".1f", "ms"),
            (
                f"late arrival ({n - 1} running): their longest gap",
                f"stall{n}",
                50,
                1000,
                ".1f",
                "ms",
            ),
        ]
    measures += [
        (
            f"prefill, {results['service'].get('prompt_tokens', [0])[0]}-token prompt",
            "prefill",
            50,
            1,
            ".0f",
            "tok/s",
        ),
    ]
    rows = []

    def row(name: str, a: float, b: float, fmt: str, unit: str) -> None:
        rows.append([name, f"{a:{fmt}} {unit}", f"{b:{fmt}} {unit}", f"{a / b:.2f}"])

    for name, key, q, scale, fmt, unit in measures:
        if key not in results["service"]:  # --one-stream-only
            continue
        ours, theirs = (percentile(results[t][key], q) * scale for t in ("service", "llama-server"))
        row(name, ours, theirs, fmt, unit)
    row("RSS at the end", rss["service"], rss["llama-server"], ".0f", "MiB")
    ours, theirs = (vram.get(t.pid, 0.0) for t in targets)
    if ours and theirs:  # on an NVIDIA GPU
        row("GPU memory at the end", ours, theirs, ".0f", "MiB")
    header = ["measurement", "inference service", "llama-server", "ratio"]
    count, step_seconds, evaluating = steps
    notes = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, code {code_version()}, medians of "
        f"{args.runs} runs (percentiles over all), {args.max_tokens} tokens per answer. "
        f"{setup}. Machine {busy_before:.0%} busy before, {load:.0%} during "
        f"(both servers' work included; load average {load_average()}). The service's "
        f"engine in its one-stream runs (overlap {health['batching']['overlap']}): "
        f"{evaluating / count * 1000:.2f} ms evaluating and "
        f"{(step_seconds - evaluating) / count * 1000:.2f} ms between evaluations a step."
    )
    report_comparison(args.record, SECTION, header, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
