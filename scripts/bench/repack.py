"""What llama.cpp's CPU weight repacking (``inference.cpu_repack``) is worth on this CPU,
and how long the model self-test takes.

Usage::

    .venv/bin/python scripts/bench/repack.py [--data-dir DIR] [--runs N] [--threads N]
        [--record]

Repacking applies per quantisation type and CPU (ggml-cpu/repack.cpp, amx/): on x86 with
AVX2 it repacks Q4_0, Q4_K, IQ4_NL and MXFP4 (Q2_K with AVX-512); Intel AMX also takes
Q4_1, Q8_0, Q5_K, Q6_K and IQ4_XS. So besides the bundled models (chat Q4_1, embedding
F32), the script requantizes them here with llama.cpp (``llama_model_quantize``) to Q4_0
and Q4_K_M, the types of most published GGUFs, and measures each model with repacking
off and on, both loaded in this process, alternating which runs first:

- prompt eval tok/s: one 128-token prompt evaluated from an empty cache (chat models);
- decode tok/s: 32 single-token evaluations after it (chat models);
- embeddings texts/s: 32 texts of ~26 tokens in one call (embedding models).

The repacked size is what llama.cpp reports for its repacked buffer (the self-test
child's log). Then the self-test (``appliance.inference.selftest.run``, a child process
with the bundled models) is timed. ``--record`` appends the tables to docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common import (
    bench_parser,
    kept_data_dir,
    load_average,
    machine_info,
    print_tables,
    record_tables,
    wait_until_idle,
)

from appliance.config import Settings
from appliance.inference import models, selftest
from appliance.inference.base import chat_llama, physical_cores
from appliance.inference.embedding import EmbeddingEngine

SECTION = "## CPU weight repacking and the model self-test (scripts/bench/repack.py)"
PROMPT_TOKENS = 128
DECODE_TOKENS = 32
TEXTS = [
    f"Sentence {i} about the quarterly report, the budget and the customers of region {i % 7}."
    for i in range(32)
]


def requantize(source: Path, target: Path, ftype: int) -> Path:
    import llama_cpp

    if not target.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = physical_cores()
        result = llama_cpp.llama_model_quantize(
            str(source).encode(), str(target).encode(), ctypes.byref(params)
        )
        if result != 0:
            raise SystemExit(f"quantizing {source.name} to {target.name} failed")
    return target


def repacked_size(settings: Settings, chat: str, embedding: str) -> tuple[str, str]:
    """What the self-test child reports as repacked (chat, embedding), repacking on."""
    verdict = selftest.run(settings, repack=True, chat_model=chat, embedding_model=embedding)
    if not verdict.ok:
        raise SystemExit(f"the self-test with {chat} and {embedding} failed: {verdict}")
    parts = verdict.detail.split("weights repacked: ", 1)[1].split(", ")
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "none")


def chat_speeds(path: Path, extra_bufts: bool, n_threads: int) -> tuple[float, float]:
    llama = chat_llama(
        path,
        n_ctx=512,
        n_threads=n_threads,
        n_gpu_layers=0,
        flash_attn=False,
        kv_cache_type="f16",
        extra_bufts=extra_bufts,
    )
    try:
        text = " ".join(TEXTS).encode()
        tokens = (llama.tokenize(text, add_bos=True) * 4)[:PROMPT_TOKENS]
        llama.reset()
        started = time.perf_counter()
        llama.eval(tokens)
        prompt = PROMPT_TOKENS / (time.perf_counter() - started)
        started = time.perf_counter()
        for index in range(DECODE_TOKENS):
            llama.eval([tokens[index]])
        decode = DECODE_TOKENS / (time.perf_counter() - started)
    finally:
        llama.close()
    return prompt, decode


def embed_speed(model: models.Model, path: Path, extra_bufts: bool, n_threads: int) -> float:
    engine = EmbeddingEngine(
        model, path, n_threads=n_threads, max_tokens=256, batch=256, extra_bufts=extra_bufts
    )
    try:
        engine.embed(TEXTS[:2])  # warm-up
        started = time.perf_counter()
        engine.embed(TEXTS)
        return len(TEXTS) / (time.perf_counter() - started)
    finally:
        engine.llama.close()


def main(argv: list[str] | None = None) -> int:
    import llama_cpp

    parser = bench_parser(__doc__, data_dir=True)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads (default 1: repacking changes the speed of each thread's "
        "kernels, and on a shared box the threads of a multi-threaded run spin at barriers, "
        "so a busy neighbour distorts its timings many times over; 0: physical cores)",
    )
    parser.add_argument("--idle-wait", type=float, default=30.0)
    args = parser.parse_args(argv)

    settings = kept_data_dir(args.data_dir, "repack")
    registry = models.load_registry(settings)
    chat, embed = registry.default("chat"), registry.default("embedding")
    derived = [
        ("chat", chat.id + "-as-q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, chat),
        ("chat", chat.id + "-as-q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, chat),
        ("embedding", embed.id + "-as-q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, embed),
    ]
    for kind, model_id, ftype, source in derived:
        if model_id not in registry.models:
            path = requantize(registry.path(source), registry.directory / f"{model_id}.gguf", ftype)
            models.register(
                registry, model_id, path, kind=kind, license=source.license, source="requantized"
            )
    registry = models.load_registry(settings)
    chats = [chat.id, chat.id + "-as-q4_0", chat.id + "-as-q4_k_m"]
    embeds = [embed.id, embed.id + "-as-q4_0"]
    repacked = {}
    for chat_id, embed_id in zip(chats, [*embeds, embeds[0]], strict=True):
        repacked[chat_id], repacked[embed_id] = repacked_size(settings, chat_id, embed_id)

    n_threads = args.threads or physical_cores()
    info = machine_info()
    started = datetime.now(UTC)
    busy = wait_until_idle(args.idle_wait)
    load_before = load_average()
    print(f"machine: {info}; CPUs busy before: {busy:.0%}; load average {load_before}")
    speeds: dict[tuple[str, bool], list[tuple[float, ...]]] = {}
    for run in range(args.runs):
        order = (False, True) if run % 2 == 0 else (True, False)
        for model_id in chats:
            for on in order:
                path = registry.path(registry.get(model_id))
                speeds.setdefault((model_id, on), []).append(chat_speeds(path, on, n_threads))
        for model_id in embeds:
            for on in order:
                model = registry.get(model_id)
                value = embed_speed(model, registry.path(model), on, n_threads)
                speeds.setdefault((model_id, on), []).append((value,))
    load_after = load_average()

    def median(model_id: str, on: bool, index: int) -> float:
        return statistics.median(values[index] for values in speeds[(model_id, on)])

    header = [
        "Model",
        "Repacked on this CPU",
        "Prompt eval tok/s off / on",
        "Ratio",
        "Decode tok/s off / on",
        "Ratio",
    ]
    rows = []
    for model_id in chats:
        prompt = [median(model_id, on, 0) for on in (False, True)]
        decode = [median(model_id, on, 1) for on in (False, True)]
        rows.append(
            [
                model_id,
                repacked[model_id],
                f"{prompt[0]:.0f} / {prompt[1]:.0f}",
                f"{prompt[1] / prompt[0]:.2f}x",
                f"{decode[0]:.0f} / {decode[1]:.0f}",
                f"{decode[1] / decode[0]:.2f}x",
            ]
        )
    embed_header = ["Embedding model", "Repacked on this CPU", "Texts/s off / on", "Ratio"]
    embed_rows = []
    for model_id in embeds:
        values = [median(model_id, on, 0) for on in (False, True)]
        embed_rows.append(
            [
                model_id,
                repacked[model_id],
                f"{values[0]:.0f} / {values[1]:.0f}",
                f"{values[1] / values[0]:.2f}x",
            ]
        )

    timings = []
    for _ in range(3):
        verdict = selftest.run(settings, repack=False)
        if not verdict.ok:
            raise SystemExit(f"the self-test failed: {verdict}")
        timings.append(verdict.seconds)
    self_test = (
        f"{statistics.median(timings):.1f} s wall (median of 3; min {min(timings):.1f} s, "
        f"max {max(timings):.1f} s), bundled models, repacking off"
    )
    tables = [("", header, rows), ("", embed_header, embed_rows)]
    print_tables(tables)
    print(f"\nself-test: {self_test}\nload average after: {load_after}")
    if args.record:
        setup = [
            ["Date", started.strftime("%Y-%m-%d %H:%M UTC")],
            ["Code", info["commit"]],
            ["Machine", f"{info['cpu']} ({info['cores']}), no GPU used"],
            [
                "CPU flags that choose kernels",
                " ".join(selftest.notable_flags(selftest.cpu_flags())),
            ],
            ["llama-cpp-python", info["llama_cpp"]],
            ["Threads", str(n_threads)],
            ["Runs", f"median of {args.runs}, off and on alternating which goes first"],
            [
                "CPUs busy before / load average before, after",
                f"{busy:.0%} / {load_before}, {load_after}",
            ],
        ]
        notes = [f"Model self-test (`appliance models self-test`, a child process): {self_test}."]
        record_tables(SECTION, setup, tables, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
