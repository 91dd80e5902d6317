"""What the web itself adds to a streamed ``/v1`` request, with the model taken out.

Usage::

    .venv/bin/python scripts/bench/web_cost.py [--data-dir DIR] [--requests 200]
        [--tokens 1] [--concurrency 1] [--baseline CHECKOUT] [--record]

A child process stands in for the inference service: it answers every chat completion at
once with ``--tokens`` streamed tokens and the usage chunk. One ``python -m appliance
web`` (billing on) points at it. This process then sends the same streamed chat
completion, alternating, (a) to the stand-in directly and (b) through the web's ``/v1``
with a bench account's key (an instance with knowledge off), each on a kept connection.
Through the web, a request is everything it does before and after the model: the key,
the body, the instance, the prompt, the billing hold, the relay, the settlement and the
request log. Without a model in the way these are the web's own milliseconds, which
``web_overhead.py`` can only see through the model's run-to-run spread.

Reported: time to the first token and to the end of the answer (medians and p90), and the
web process's CPU per request (``/proc/PID/task/*/schedstat``, every thread); with
``--tokens`` above 1, also per token (what relaying one costs). ``--concurrency N`` sends
N requests at once to a path, then N to the next (what a burst of requests costs each).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from aiohttp import web
from api_accounts import bench_account
from common import (
    ROOT,
    bench_data_dir,
    bench_parser,
    code_version,
    percentile,
    process_cpu_seconds,
    report_comparison,
    run_main,
    run_stamp,
    start_web,
)

SECTION = "### The web's own cost per request (scripts/bench/web_cost.py)"
WARM_UP = 20
CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
TOKEN = {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
USAGE = {**CHUNK, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
BODY = {
    "model": "bench",
    "stream": True,
    "max_tokens": 16,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a short story about a cat."},
    ],
    "appliance": {"knowledge": False},
}


def stand_in(listener: socket.socket, tokens: int) -> None:
    """The inference service's answers the web needs, given at once (``tokens`` of them
    in each streamed answer)."""

    async def tokenize(request: web.Request) -> web.Response:
        texts = (await request.json())["input"]
        return web.json_response({"counts": [len(t.split()) + 1 for t in texts]})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "chat_model": "stand-in"})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in [TOKEN] * tokens + [USAGE]:
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, sock=listener, print=None, access_log=None, handle_signals=False)


def timed(http: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """Seconds to the first token and to the end of one streamed answer."""
    start = time.perf_counter()
    first = None
    with http.stream("POST", url, json=BODY, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()!r}")
        for line in response.iter_lines():
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - start
    return first or float("nan"), time.perf_counter() - start


def main() -> int:
    parser = bench_parser(__doc__, data_dir=True)
    parser.add_argument("--requests", type=int, default=200, help="requests per path")
    parser.add_argument("--tokens", type=int, default=1, help="tokens in each answer")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests sent at once on each path"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also a web from this source tree (another commit's), in the same rotation",
    )
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.Process(target=stand_in, args=(listener, args.tokens), daemon=True)
    server.start()
    port = listener.getsockname()[1]
    with contextlib.ExitStack() as stack:
        stack.callback(server.kill)
        settings = bench_data_dir(stack, args.data_dir)
        _, keys = bench_account(
            settings,
            f"web-cost-{time.time_ns()}",
            {"name": "bench", "knowledge": False, "max_tokens": 64},
            credit_usd=100,
        )
        webs = {"this web": ROOT} | ({"baseline web": args.baseline} if args.baseline else {})
        fronts = {}
        for name, checkout in webs.items():
            fronts[name] = start_web(
                settings.paths.data_dir,
                checkout.resolve(),
                APPLIANCE_INFERENCE__PORT=str(port),
                APPLIANCE_BILLING__ENABLED="true",
            )
            stack.callback(fronts[name].stop)
        key = {"authorization": f"Bearer {keys['inference']}"}
        paths = {"stand-in directly": (f"http://127.0.0.1:{port}/v1/chat/completions", {})}
        for name, front in sorted(fronts.items()):  # the baseline first
            paths[name] = (f"{front.url}/v1/chat/completions", key)
        times, cpu = measure(paths, fronts, args.requests, args.concurrency)
    rows = comparison_rows(times, cpu, args.tokens)
    notes = (
        f"{run_stamp()}; {args.requests} streamed requests per path of {args.tokens} "
        f"token{'s' if args.tokens > 1 else ''} each, {args.concurrency} at a time, in "
        "rotation, after "
        f"{WARM_UP} each to warm up; {os.cpu_count()} CPUs shared by the stand-in, the "
        "web(s) and this client."
    )
    if args.baseline:
        notes += f" Baseline web: {args.baseline} at {code_version(args.baseline)}."
    header = ["measurement", *paths, *(f"added by {name}" for name in list(paths)[1:])]
    report_comparison(args.record, SECTION, header, rows, notes)
    return 0


def measure(
    paths: dict[str, tuple[str, dict[str, str]]], fronts: dict, requests: int, concurrency: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """Per path, (first token, end) of each request; per web, its CPU seconds a request.
    Each round sends ``concurrency`` requests at once to one path, then to the next."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    order = list(paths)
    limits = httpx.Limits(max_keepalive_connections=concurrency, max_connections=concurrency)
    with httpx.Client(timeout=30, limits=limits) as http, ThreadPoolExecutor(concurrency) as pool:
        for _ in range(WARM_UP):
            for url, headers in paths.values():
                timed(http, url, headers)
        before = {name: process_cpu_seconds(front.process.pid) for name, front in fronts.items()}
        for i in range(0, requests, concurrency):
            for name in order[i % len(order) :] + order[: i % len(order)]:
                burst = [pool.submit(timed, http, *paths[name]) for _ in range(concurrency)]
                times[name] += [future.result() for future in burst]
        cpu = {
            name: (process_cpu_seconds(front.process.pid) - before[name]) / len(times[name])
            for name, front in fronts.items()
        }
    return times, cpu


def comparison_rows(
    times: dict[str, list[tuple[float, float]]], cpu: dict[str, float], tokens: int
) -> list[list[str]]:
    """One row per measurement: each path's figure in ms, then what each web adds to the
    stand-in's (and with ``tokens`` > 1, the whole answer's per token, the relay's own)."""
    direct, *webs = times
    rows = []
    for label, index, pct in (
        ("time to first token, p50", 0, 50),
        ("time to first token, p90", 0, 90),
        ("whole answer, p50", 1, 50),
    ):
        ms = {p: percentile([t[index] for t in times[p]], pct) * 1000 for p in times}
        added = [f"{ms[w] - ms[direct]:+.2f} ms" for w in webs]
        rows.append([label, *(f"{v:.2f} ms" for v in ms.values()), *added])
    if tokens > 1:
        ms = {p: percentile([t[1] for t in times[p]], 50) * 1000 / tokens for p in times}
        added = [f"{(ms[w] - ms[direct]) * 1000:+.1f} µs" for w in webs]
        row = ["whole answer per token, p50", *(f"{v * 1000:.1f} µs" for v in ms.values())]
        rows.append([*row, *added])
    cells = [f"{cpu[w] * 1000:.2f} ms" for w in webs]
    rows.append(["web process CPU per request", "", *cells, *([""] * len(webs))])
    if tokens > 1:
        cells = [f"{cpu[w] * 1e6 / tokens:.1f} µs" for w in webs]
        rows.append(["web process CPU per token", "", *cells, *([""] * len(webs))])
    return rows


if __name__ == "__main__":
    run_main(main)
