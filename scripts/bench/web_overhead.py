"""Measure what the web's ``/v1`` adds in front of the inference service (issue 20).

Usage::

    .venv/bin/python scripts/bench/web_overhead.py [--data-dir DIR] [--runs 3]
        [--max-tokens 64] [--streams 8] [--wait-idle SECONDS] [--record]

Starts one ``python -m appliance inference`` and one ``python -m appliance web`` on the same
data dir, the web pointed at that service (``APPLIANCE_INFERENCE__PORT``) and with billing on,
so both paths reach the same engine and only the web differs. A bench account
(``web-overhead-*@bench.invalid``) gets an instance (knowledge off), an ``inference`` key and
credit. Then, through the official ``openai`` client, alternating which path goes first in
each run: (a) the inference service directly (its key; the account's id as the account
header) and (b) the web's ``/v1`` with the API key:

- one stream, greedy, ``--max-tokens``: TTFT, decode tok/s, inter-token gap p50/p95;
- ``--streams`` concurrent greedy streams: aggregate completion tok/s (all tokens / first
  request -> last end) and TTFT p50;
- short requests, not streamed (8 tokens, 5 a run): total latency.

Both paths get the same request: it brings its own system message (so the web adds no
instance prompt) and asks the web for no knowledge (``"appliance": {"knowledge": false}``).
Each starts with a tag no other request has, so no prefix cache helps either side.

What the web does per request is the overhead measured: it looks up the bearer key by its
hash (and its user and account), parses and checks the body, looks up the instance, counts
the prompt's tokens (one ``/tokenize`` call to the inference service), reserves a billing
hold (``BEGIN IMMEDIATE``: balance, open holds, spend caps), relays the inference service's
chunks under the instance's name (on a connection kept from earlier requests), settles the
hold when the answer ends, and writes a request-log row (database connections kept too).
``web_cost.py`` measures the same work with the model taken out.

Differences are web - service in ms for times and web / service for rates; medians over
``--runs`` (percentiles over all the runs' gaps, TTFTs and short requests). Both services
share the CPUs with this client: a busy machine makes the numbers noisy (the paths alternate).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from api_accounts import bench_account
from common import (
    bench_data_dir,
    bench_parser,
    busy_at_start,
    load_average,
    percentile,
    report_comparison,
    run_main,
    run_stamp,
    start_inference,
    start_web,
)
from vs_llama_server import Target, story, stream

from appliance import vault
from appliance.inference.client import ACCOUNT_HEADER

SECTION = "## The web's /v1 in front of the inference service (scripts/bench/web_overhead.py)"
PATHS = ("service", "web")
SHORT_TOKENS = 8
#: Short requests per path and run (cheap, and the figure nearest the web's own cost).
SHORT_REPEATS = 5


def ask(target: Target, tag: str, index: int, max_tokens: int):
    """One greedy chat completion on ``target``, not streamed."""
    return target.client.chat.completions.create(
        model=target.model,
        messages=story(tag, index),
        max_tokens=max_tokens,
        temperature=0,
        top_p=0.95,  # the instance's default, which the web would add otherwise
        **target.extra,
    )


def measure(target: Target, tag: str, max_tokens: int, streams: int) -> dict[str, list[float]]:
    one = stream(target, story(f"{tag} one", 0), max_tokens=max_tokens)
    with ThreadPoolExecutor(streams) as pool:
        futures = [
            pool.submit(stream, target, story(f"{tag} many.{i}", i), max_tokens=max_tokens)
            for i in range(streams)
        ]
        many = [f.result() for f in futures]
    end = time.perf_counter()
    shorts = []
    for i in range(SHORT_REPEATS):
        start = time.perf_counter()
        ask(target, f"{tag} short.{i}", i, SHORT_TOKENS)
        shorts.append(time.perf_counter() - start)
    return {
        "ttft1": [one.ttft],
        "tps1": [one.decode_tps],
        "gaps": one.gaps,
        "agg": [sum(r.tokens for r in many) / (end - min(r.start for r in many))],
        "ttftN": [r.ttft for r in many],
        "short": shorts,
    }


def comparison_rows(results: dict[str, dict[str, list[float]]], streams: int) -> list[list[str]]:
    """measurement | inference service | web /v1 | difference: web - service in ms for
    times, web / service for rates; medians of per-run figures, percentiles of the rest."""
    # (measurement, key, percentile, is a time)
    measures = [
        ("one stream TTFT", "ttft1", 50, True),
        ("one stream decode", "tps1", 50, False),
        ("one stream inter-token p50", "gaps", 50, True),
        ("one stream inter-token p95", "gaps", 95, True),
        (f"{streams} streams aggregate", "agg", 50, False),
        (f"{streams} streams TTFT p50", "ttftN", 50, True),
        ("short request, not streamed", "short", 50, True),
    ]
    rows = []
    for name, key, pct, is_time in measures:
        service, web = (percentile(results[p][key], pct) for p in PATHS)
        if is_time:
            cells = [f"{service * 1000:.1f} ms", f"{web * 1000:.1f} ms"]
            rows.append([name, *cells, f"{(web - service) * 1000:+.1f} ms"])
        else:
            rows.append([name, f"{service:.1f} tok/s", f"{web:.1f} tok/s", f"{web / service:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, data_dir=True, wait_idle=True)
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per streamed answer")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    args = parser.parse_args(argv)

    busy_before = busy_at_start(args)
    results: dict[str, dict[str, list[float]]] = {p: {} for p in PATHS}
    with contextlib.ExitStack() as stack:
        settings = bench_data_dir(stack, args.data_dir)
        account_id, keys = bench_account(
            settings,
            f"web-overhead-{time.time_ns()}",
            {"name": "bench", "knowledge": False, "max_tokens": args.max_tokens},
            credit_usd=100,
        )
        queue = str(max(32, 2 * args.streams))
        service = start_inference(
            settings,
            APPLIANCE_INFERENCE__QUEUE_SIZE=queue,
            APPLIANCE_INFERENCE__PER_ACCOUNT_QUEUE=str(max(8, args.streams)),
        )
        stack.callback(service.stop)
        web = start_web(
            settings.paths.data_dir,
            APPLIANCE_INFERENCE__PORT=service.url.rsplit(":", 1)[1],
            APPLIANCE_BILLING__ENABLED="true",
        )
        stack.callback(web.stop)
        model = httpx.get(service.url + "/healthz", timeout=10).json()["chat_model"]
        paths = [
            Target(
                "service",
                openai.OpenAI(
                    base_url=service.url + "/v1",
                    api_key=vault.read_secret(settings, "inference_key"),
                    timeout=600,
                ),
                model,
                service.process.pid,
                {"extra_headers": {ACCOUNT_HEADER: account_id}},
            ),
            Target(
                "web",
                openai.OpenAI(base_url=web.url + "/v1", api_key=keys["inference"], timeout=600),
                "bench",
                web.process.pid,
                {"extra_body": {"appliance": {"knowledge": False}}},
            ),
        ]
        for path in paths:  # warm-up (connections, the web's first requests), discarded
            stream(path, story(f"warm {path.name} {time.time_ns()}", 0), max_tokens=8)
        stamp = time.time_ns() % 10**8
        for run in range(args.runs):
            for path in paths if run % 2 == 0 else paths[::-1]:
                got = measure(path, f"[{stamp}.{run}.{path.name}]", args.max_tokens, args.streams)
                for key, values in got.items():
                    results[path.name].setdefault(key, []).extend(values)
                print(
                    f"run {run + 1} {path.name}: TTFT {got['ttft1'][0] * 1000:.1f} ms, "
                    f"{got['tps1'][0]:.1f} tok/s one, {got['agg'][0]:.1f} agg"
                )

    header = ["measurement", "inference service", "web /v1", "difference"]
    rows = comparison_rows(results, args.streams)
    command = shlex.join(["python", "scripts/bench/web_overhead.py", *(argv or sys.argv[1:])])
    notes = (
        f"{run_stamp()}; load average {load_average()} at the end (machine {busy_before:.0%} "
        f"busy before). `{command}`: medians of {args.runs} runs, "
        f"{args.max_tokens} tokens per streamed answer, greedy, {model}."
    )
    report_comparison(args.record, SECTION, header, rows, notes)
    return 0


if __name__ == "__main__":
    run_main(main)
