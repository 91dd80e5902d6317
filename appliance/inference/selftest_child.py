"""The model self-test's child: ``python -m appliance.inference.selftest_child ...``.

It loads the chat model with the service's settings, evaluates a 16-token prompt,
generates 4 tokens, loads the embedding model and embeds one text, then prints one line
starting with ``SELFTEST`` (what ran, how long, which weights llama.cpp repacked). A
failure is one line on stderr and exit status 1; a crash is the signal that kills it.
appliance/inference/selftest.py runs it and reads how it ended.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from appliance.inference import models

PROMPT_TOKENS = 16
ANSWER_TOKENS = 4
PROMPT = (
    "The quick brown fox jumps over the lazy dog while the five boxing wizards jump "
    "quickly and a sphinx of black quartz judges my vow."
)
RESULT_PREFIX = "SELFTEST "


def main(argv: list[str] | None = None) -> int:
    """The child: load both models, a 16-token prompt, 4 tokens out, one embedding."""
    parser = argparse.ArgumentParser(prog="python -m appliance.inference.selftest_child")
    parser.add_argument("--chat", type=Path, required=True)
    parser.add_argument("--embedding", type=Path, required=True)
    parser.add_argument("--repack", choices=("on", "off"), required=True)
    parser.add_argument("--n-threads", type=int, default=0)
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--kv-cache-type", default="f16")
    parser.add_argument("--embedding-max-tokens", type=int, default=256)
    parser.add_argument("--flash-attn", action="store_true")
    args = parser.parse_args(argv)

    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    buffers: list[str] = []

    @llama_cpp.llama_log_callback
    def keep_buffer_sizes(level, text, user_data):  # llama.cpp's log: only the buffers
        line = text.decode("utf-8", "replace")
        if "model buffer size" in line:
            name, _, size = line.partition(":")[2].partition("model buffer size =")
            buffers.append(f"{name.strip()} {size.strip()}")

    llama_cpp.llama_log_set(keep_buffer_sizes, ctypes.c_void_p(0))
    try:
        summary = _exercise(args, buffers)
    except Exception as exc:  # a failure, as opposed to a crash: said in one line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        # llama-cpp-python's own callback lives as long as the interpreter; this one not.
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    print(RESULT_PREFIX + summary, flush=True)
    return 0


def _exercise(args: argparse.Namespace, buffers: list[str]) -> str:
    import numpy as np

    from appliance.inference.base import chat_llama, gpu_layers, physical_cores
    from appliance.inference.embedding import EmbeddingEngine

    repack = args.repack == "on"
    n_threads = args.n_threads or physical_cores()
    started = time.monotonic()
    llama = chat_llama(
        args.chat,
        n_ctx=512,
        n_threads=n_threads,
        n_gpu_layers=gpu_layers(args.n_gpu_layers),
        flash_attn=args.flash_attn,
        kv_cache_type=args.kv_cache_type,
        extra_bufts=repack,
    )
    try:
        tokens = llama.tokenize(PROMPT.encode(), add_bos=True, special=False)
        prompt = (tokens * PROMPT_TOKENS)[:PROMPT_TOKENS]
        answer = list(itertools.islice(llama.generate(prompt, temp=0.0, top_k=1), ANSWER_TOKENS))
    finally:
        llama.close()
    chat_seconds = time.monotonic() - started
    model = models.Model("self-test", args.embedding.name, "embedding", 0, "", "", "", "")
    embedder = EmbeddingEngine(
        model,
        args.embedding,
        n_threads=n_threads,
        max_tokens=args.embedding_max_tokens,
        batch=args.embedding_max_tokens,
        extra_bufts=repack,
    )
    try:
        vector = np.asarray(embedder.embed([PROMPT])[0][0])
    finally:
        embedder.llama.close()
    if not np.isfinite(vector).all() or not vector.any():
        raise ValueError("the embedding model returned a vector that is not finite or all zeros")
    # CPU_Mapped/CUDA0 hold weights as stored; CPU_REPACK, AMX, ... hold repacked ones.
    repacked = [b for b in buffers if not b.startswith(("CPU_Mapped", "CPU ", "CUDA"))]
    return (
        f"{len(prompt)}-token prompt and {len(answer)} tokens out in {chat_seconds:.2f} s, "
        f"one {embedder.dim}-dim embedding; weights repacked: {', '.join(repacked) or 'none'}"
    )


if __name__ == "__main__":
    sys.exit(main())
