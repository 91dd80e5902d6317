"""Where a step of the batched chat engine spends its time, in this process.

Usage::

    .venv/bin/python scripts/bench/step_profile.py [--data-dir DIR] [--threads N]
        [--max-tokens N] [--runs N]

Loads the configured chat model as the ``BatchedChatEngine`` (8 slots) behind the real
``Scheduler`` and times, with ``time.perf_counter`` wrappers, each step and its parts:
``llama_decode``, ``_plan``, ``_fill``, ``_sample`` and within it ``llama_sampler_sample``,
a token's bytes (``piece``) and handing events to the event loop. For 1 and 8 streams it
alternates the engine as it is (each token's bytes read from llama.cpp once, then from a
cache) with the bytes read through llama-cpp-python's ``detokenize`` for every token (the
engine before issue 20's last change), and prints the milliseconds per call of each part.
``--data-dir`` is a data dir with the models installed (default: a temporary one, set up
here).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time

from batching import Stream, chat_request, consume, messages, served_engine
from common import bench_data_dir, bench_parser, cpu_model, load_average, text_table

from appliance.inference import scheduler

PARTS = ("step", "llama_decode", "_plan", "_fill", "_sample", "sampler", "piece", "emit")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True, record=False)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="alternations per stream count")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        engine = served_engine(settings, args.threads)
        stack.callback(engine.close)
        seconds: collections.Counter = collections.Counter()
        calls: collections.Counter = collections.Counter()

        def timed(owner, name: str, key: str) -> None:
            original = getattr(owner, name)

            def wrapper(*a, **k):
                began = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    seconds[key] += time.perf_counter() - began
                    calls[key] += 1

            setattr(owner, name, wrapper)

        for name in ("step", "_plan", "_fill", "_sample"):
            timed(engine, name, name)
        timed(engine._lib, "llama_decode", "llama_decode")
        timed(engine._lib, "llama_sampler_sample", "sampler")
        timed(scheduler.Job, "emit", "emit")
        cached = engine.piece

        def per_token(token: int) -> bytes:
            return engine.llama.detokenize([token])

        chat = scheduler.Scheduler("chat", engine, queue_size=64, per_account=8)
        chat.start()
        stack.callback(chat.stop)

        async def run(n: int, tag: int) -> list[Stream]:
            loop = asyncio.get_running_loop()
            streams = []
            for i in range(n):
                payload = chat_request(messages(i, tag, n), args.max_tokens, seed=i)
                job = scheduler.Job(account=f"profile-{i}", payload=payload, loop=loop)
                chat.submit(job)
                streams.append(Stream(job, time.perf_counter()))
            await asyncio.gather(*(consume(s) for s in streams))
            return streams

        rows = []
        tag = int(time.time()) % 1000 * 100
        for n in (1, 8):
            for attempt in range(args.runs * 2):
                uncached = attempt % 2 == 0
                engine.piece = per_token if uncached else cached
                timed(engine, "piece", "piece")
                seconds.clear()
                calls.clear()
                began = time.perf_counter()
                streams = asyncio.run(run(n, tag))
                tag += 1
                elapsed = time.perf_counter() - began
                tokens = sum(s.finish.completion_tokens for s in streams)
                step = seconds["step"] / calls["step"]
                decode = seconds["llama_decode"] / calls["llama_decode"]
                row = [n, "per token" if uncached else "cached", f"{tokens / elapsed:.1f}"]
                row += [f"{(step - decode) * 1000:.2f}"]
                row += [f"{seconds[p] / calls[p] * 1000:.2f}" if calls[p] else "-" for p in PARTS]
                rows.append(row)
                print(text_table(HEADER, rows[-1:]).splitlines()[-1])
        print()
        print(f"{cpu_model()}, {args.threads} thread(s), load average {load_average()}")
        print(text_table(HEADER, rows))
    return 0


HEADER = ["streams", "pieces", "tok/s", "step - decode ms", *(f"{p} ms" for p in PARTS)]

if __name__ == "__main__":
    sys.exit(main())
