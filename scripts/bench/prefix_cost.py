"""What the chat engine's cached prefixes cost each decoding step, in this process.

Usage::

    .venv/bin/python scripts/bench/prefix_cost.py --data-dir DIR [--threads N] [--rounds N]

Loads the configured chat model as the ``BatchedChatEngine`` (8 slots, 8 cached prefixes,
``n_ctx`` 8192, as the service runs it) behind the real ``Scheduler`` and alternates: one
stream's decode rate (1 / the median gap between its tokens, 96 tokens) with the prefix
cache empty, then with it holding 8 finished prompts of ~900 tokens each. Until commit
d9fd70b cached prefixes stayed as cells of the one unified KV cache, and llama.cpp's
attention ran over every used cell for every token, masked or not (0.83x); since then they
are kept in host memory, and the two rates should be the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import sys
import time

from batching import Stream, chat_request, consume, messages, served_engine
from common import bench_data_dir, bench_parser, cpu_model, load_average, text_table

from appliance.inference import scheduler

PAIRS = [("lake", "town"), ("hill", "river"), ("road", "field"), ("tree", "wood"), ("barn", "farm")]
FACTS = " ".join(f"Fact {i}: the {a} is near the {b}." for i, (a, b) in enumerate(PAIRS * 18))


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True, record=False)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        engine = served_engine(settings, args.threads)
        stack.callback(engine.close)
        chat = scheduler.Scheduler("chat", engine, queue_size=64, per_account=8)
        chat.start()
        stack.callback(chat.stop)

        async def run(prompts: list[list[dict[str, str]]], max_tokens: int) -> list[Stream]:
            loop = asyncio.get_running_loop()
            streams = []
            for i, msgs in enumerate(prompts):
                payload = chat_request(msgs, max_tokens, seed=i)
                job = scheduler.Job(account=f"prefix-{i}", payload=payload, loop=loop)
                chat.submit(job)
                streams.append(Stream(job, time.perf_counter()))
            await asyncio.gather(*(consume(s) for s in streams))
            return streams

        def decode_rate(tag: int) -> float:
            stream = asyncio.run(run([messages(0, tag, 1)], 96))[0]
            return 1 / statistics.median(b - a for a, b in itertools.pairwise(stream.times))

        def fill(tag: int) -> None:
            prompts = [
                [
                    {"role": "system", "content": f"{tag}.{i} {FACTS}"},
                    {"role": "user", "content": "Hi"},
                ]
                for i in range(8)
            ]
            asyncio.run(run(prompts, 1))

        decode_rate(0)  # warm up
        rates: dict[str, list[float]] = {"empty": [], "8 cached prompts": []}
        held = 0
        for r in range(args.rounds):
            engine.prefixes.clear()
            rates["empty"].append(decode_rate(10 + r))
            fill(100 + r)
            held = len(engine.prefixes)
            rates["8 cached prompts"].append(decode_rate(20 + r))
        base = statistics.median(rates["empty"])
        rows = [
            [
                name,
                f"{statistics.median(v):.1f}",
                " / ".join(f"{x:.1f}" for x in v),
                f"{statistics.median(v) / base:.2f}",
            ]
            for name, v in rates.items()
        ]
        print(
            f"{cpu_model()}, {args.threads} thread(s), load average {load_average()}, "
            f"{held} prefixes held after filling"
        )
        print(text_table(["prefix cache", "decode tok/s (median)", "rounds", "ratio"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
