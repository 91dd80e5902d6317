"""CPU a web process spends reading one streamed answer, per token: httpx against the client.

Usage::

    .venv/bin/python scripts/bench/relay_client.py [--pairs 8] [--tokens 128] [--gap-ms 10]
        [--record]

A child process serves server-sent events as the inference service does (chunked, one
~150-byte chat chunk every ``--gap-ms``, so the reader waits idle between tokens as it does
behind a model). In this process, on uvloop as the web runs, alternating in each pair:
(a) httpx reads the stream line by line, as ``InferenceClient.astream_chat`` did until
issue 20, and (b) ``InferenceClient.astream_chat`` itself (aiohttp). Each read parses every
chunk's JSON. The figure is this process's CPU time over the answer divided by its tokens:
with two cores and llama.cpp on both, every microsecond of it delays the model's own step.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import statistics
import time

import httpx
import uvloop
from common import bench_parser, report_comparison, run_main, run_stamp

from appliance.inference.client import InferenceClient

CHUNK = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "model": "bench",
    "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
}


def serve(listener: socket.socket, tokens: int, gap: float) -> None:
    """Answer each request on ``listener`` with ``tokens`` events, ``gap`` seconds apart."""
    event = b"data: " + json.dumps(CHUNK).encode() + b"\n\n"
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, conn.makefile("rb") as incoming:
            length = 0
            while (line := incoming.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            incoming.read(length)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
            conn.sendall(b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(tokens):
                time.sleep(gap)
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            conn.sendall(b"0\r\n\r\n")


async def with_httpx(client: InferenceClient) -> int:
    """The relay's read before issue 20: httpx, a line at a time."""
    count = 0
    async with (
        httpx.AsyncClient(timeout=client.timeout) as http,
        http.stream("POST", client._url("/v1/chat/completions"), json={"stream": True}) as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                json.loads(line[5:])
                count += 1
    return count


async def with_client(client: InferenceClient) -> int:
    return sum([1 async for _ in client.astream_chat({"messages": []})])


async def measure(url: str, pairs: int, tokens: int) -> dict[str, list[float]]:
    client = InferenceClient(url, "bench-key", timeout=30)
    readers = {"httpx (until issue 20)": with_httpx, "InferenceClient (aiohttp)": with_client}
    for read in readers.values():  # imports, first connections
        await read(client)
    per_token: dict[str, list[float]] = {name: [] for name in readers}
    for pair in range(pairs):
        order = list(readers.items())
        for name, read in order if pair % 2 == 0 else reversed(order):
            start = time.process_time()
            assert await read(client) == tokens
            per_token[name].append((time.process_time() - start) / tokens * 1e6)
    return per_token


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.Process(
        target=serve, args=(listener, args.tokens, args.gap_ms / 1000), daemon=True
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        per_token = uvloop.run(measure(url, args.pairs, args.tokens))
    finally:
        server.kill()
    medians = {name: statistics.median(values) for name, values in per_token.items()}
    baseline = next(iter(medians.values()))
    rows = [
        [
            name,
            f"{m:.0f}",
            f"{min(per_token[name]):.0f} to {max(per_token[name]):.0f}",
            f"{m / baseline:.2f}",
        ]
        for name, m in medians.items()
    ]
    notes = (
        f"{run_stamp()}. {args.pairs} alternating pairs, {args.tokens} tokens "
        f"{args.gap_ms:g} ms apart; CPU time of the reading process per token, medians."
    )
    report_comparison(
        args.record,
        "### Reading a streamed answer in the web (scripts/bench/relay_client.py)",
        ["reader", "CPU µs/token", "range", "vs httpx"],
        rows,
        notes,
    )
    return 0


if __name__ == "__main__":
    run_main(main)
