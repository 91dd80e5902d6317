"""Where a step of the batched chat engine spends its time, in this process, with
``llama_decode`` made asynchronous as on a GPU.

Usage::

    .venv/bin/python scripts/bench/step_profile.py [--data-dir DIR] [--threads N]
        [--max-tokens N] [--runs N] [--temperature T]

Loads the configured chat model as the ``BatchedChatEngine`` (8 slots) behind the real
``Scheduler``. On a GPU ``llama_decode`` returns once the step is queued on the device and
llama.cpp waits for it when the logits are read; here the CPU does the evaluating, so
``llama_decode`` is handed to a thread of its own and every other llama.cpp call waits for
it first: the engine's Python then runs beside the evaluation where it would on a GPU.
Give llama.cpp fewer threads than there are cores (``--threads 1`` on 2 cores) so that
the engine's thread has a core of its own, as beside a GPU.

For 1 and 8 streams it alternates the engine with ``overlap`` off (a step's text handed on
right after sampling, before the next step is queued) and on (handed on while the next
step is evaluated), and prints, per step, in milliseconds: the whole step; the evaluation
(from ``llama_decode`` to the end of its wait: the engine's own ``decode_ms``); the Python
that is left between two evaluations (the step less the evaluation); and per call
``_hand_on`` (the text handed on during an evaluation), ``_sample`` and within it
``llama_sampler_sample``. ``--data-dir`` is a data dir with the models installed (default:
a temporary one, set up here).

``--stand-in-ms MS``: a step whose every token is a decode token (with logits) is not
evaluated; the device thread waits MS milliseconds instead, and the step reads the logits
of the last evaluated one again. On the CPU, an evaluation streams the model's weights
through the caches, and the engine's Python after it runs on cold caches, several times
slower than it would beside a GPU, whose evaluation leaves the CPU's caches alone; the
stand-in leaves them alone too. Its text is nonsense; what it measures is the Python.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from batching import Stream, chat_request, consume, messages, served_engine
from common import bench_data_dir, bench_parser, cpu_model, load_average, text_table

from appliance.inference import scheduler

PARTS = ("_hand_on", "_sample", "sampler")


def _wait(seconds: float) -> int:
    time.sleep(seconds)
    return 0


class QueuedDevice:
    """llama_cpp whose ``llama_decode`` returns at once while the evaluation goes on in a
    thread of its own; any other call waits for it first (the benchmark fills no KV cache,
    so the step is taken to succeed, and its result is checked when waited for)."""

    def __init__(self, lib: Any, stand_in_ms: float = 0.0) -> None:
        self.lib = lib
        self.device = ThreadPoolExecutor(1, thread_name_prefix="device")
        self.queued: Future | None = None
        self.stand_in = stand_in_ms / 1000
        self.outputs = 0  # the last evaluated step's tokens, if each had logits, else 0

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        self.wait()
        n = batch.n_tokens
        every_token_out = all(batch.logits[i] for i in range(n))
        if self.stand_in and every_token_out and n <= self.outputs:
            # Logits at indices 0..n-1 are the last evaluated step's: read again, as if new.
            self.queued = self.device.submit(_wait, self.stand_in)
        else:
            self.outputs = n if every_token_out else 0
            self.queued = self.device.submit(self.lib.llama_decode, ctx, batch)
        return 0

    def wait(self) -> None:
        if self.queued is not None:
            queued, self.queued = self.queued, None
            if (rc := queued.result()) != 0:
                raise RuntimeError(f"llama_decode returned {rc}")

    def __getattr__(self, name: str) -> Any:
        function = getattr(self.lib, name)

        def call(*args: Any) -> Any:
            self.wait()
            return function(*args)

        setattr(self, name, call)
        return call


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True, record=False)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="0: greedy (the logits' argmax)"
    )
    parser.add_argument("--runs", type=int, default=2, help="alternations per stream count")
    parser.add_argument(
        "--stand-in-ms",
        type=float,
        default=0.0,
        help="a device that evaluates a decode step in this many ms and leaves the CPU alone",
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        engine = served_engine(settings, args.threads)
        stack.callback(engine.close)
        engine._lib = QueuedDevice(engine._lib, args.stand_in_ms)
        stack.callback(engine._lib.device.shutdown)
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

        for name in ("_hand_on", "_sample"):
            timed(engine, name, name)
        timed(engine._lib, "llama_sampler_sample", "sampler")
        chat = scheduler.Scheduler("chat", engine, queue_size=64, per_account=8)
        chat.start()
        stack.callback(chat.stop)

        async def run(n: int, tag: int) -> list[Stream]:
            loop = asyncio.get_running_loop()
            streams = []
            for i in range(n):
                payload = chat_request(
                    messages(i, tag, n), args.max_tokens, seed=i, temperature=args.temperature
                )
                job = scheduler.Job(account=f"profile-{i}", payload=payload, loop=loop)
                chat.submit(job)
                streams.append(Stream(job, time.perf_counter()))
            await asyncio.gather(*(consume(s) for s in streams))
            return streams

        rows = []
        tag = int(time.time()) % 1000 * 100
        metrics = engine.metrics
        for n in (1, 8):
            for attempt in range(args.runs * 2):
                engine.overlap = attempt % 2 == 1
                seconds.clear()
                calls.clear()
                before = (metrics.steps, metrics.step_seconds, metrics.decode_seconds)
                began = time.perf_counter()
                streams = asyncio.run(run(n, tag))
                tag += 1
                elapsed = time.perf_counter() - began
                steps = metrics.steps - before[0]
                step = (metrics.step_seconds - before[1]) / steps
                evaluation = (metrics.decode_seconds - before[2]) / steps
                tokens = sum(s.finish.completion_tokens for s in streams)
                row = [n, "on" if engine.overlap else "off", f"{tokens / elapsed:.1f}"]
                row += [f"{ms * 1000:.2f}" for ms in (step, evaluation, step - evaluation)]
                row += [f"{seconds[p] / calls[p] * 1000:.2f}" if calls[p] else "-" for p in PARTS]
                rows.append(row)
                print(text_table(HEADER, rows[-1:]).splitlines()[-1])
        print()
        print(
            f"{cpu_model()}, {args.threads} llama.cpp thread(s) on a queued device"
            + (f" (decode steps: a {args.stand_in_ms:g} ms stand-in)" if args.stand_in_ms else "")
            + ", "
            f"temperature {args.temperature}, load average {load_average()}"
        )
        print(text_table(HEADER, rows))
    return 0


HEADER = [
    "streams",
    "overlap",
    "tok/s",
    "step ms",
    "evaluation ms",
    "between evaluations ms",
    *(f"{p} ms" for p in PARTS),
]

if __name__ == "__main__":
    sys.exit(main())
