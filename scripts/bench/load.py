"""Load benchmark (issue 21): a team's scripts against a running appliance.

Usage::

    .venv/bin/python scripts/bench/load.py --url http://127.0.0.1:8000 --data-dir DIR
    .venv/bin/python scripts/bench/load.py --start      # a fresh appliance, temporary dir

Options: ``--seconds 60`` per variant, ``--clients 16``, ``--variants 1,2`` (accounts the
clients are spread over: the issue's one account, then two), ``--record`` (append the
tables to docs/benchmarks.md).

Against a running appliance (``--url``; ``--data-dir`` is its data dir on this machine):
the script adds bench accounts (``load-N@bench.invalid``), each with an instance
``assistant`` (knowledge on, 16 tokens), a ``manage`` and an ``inference`` key and three
Markdown documents, straight in the database, then waits until the documents are
indexed. ``--start`` first runs ``python -m appliance up`` on a fresh data dir (bundled
models, web port and inference port free ones), and stops it at the end.

Then ``--clients`` threads, spread round-robin over the accounts, loop for ``--seconds``
over the issue's mix: 60 % ``GET /api/search``, 20 % ``GET /api/documents``, 10 %
``POST /api/documents`` (a small Markdown file), 10 % ``POST /v1/chat/completions``
(16 tokens) through the official ``openai`` client with its default retries (2, waiting
what ``Retry-After`` says). Every HTTP answer is counted, retried chat attempts included
(an httpx event hook): a 5xx fails the run, and so does a 429 or 503 without
``Retry-After``. Latencies are per call (for chat: with the SDK's retries). Afterwards,
with ``--start``: ``appliance kb audit`` and SQLite's ``integrity_check``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
from api_accounts import bench_account
from common import (
    append_to_doc,
    bench_parser,
    code_version,
    load_average,
    machine_info,
    markdown_table,
    percentile,
    start_up,
)

from appliance.config import Settings

SECTION = "## Load: the issue 21 mix (scripts/bench/load.py)"
KINDS = ("search", "list documents", "upload", "chat (`/v1`)")
WEIGHTS = (0.6, 0.2, 0.1, 0.1)
QUERIES = ("kettle", "where are the mugs", "opening hours", "invoice number", "the blue door")
DOCUMENT = (
    "# House notes {n}\n\nThe kettle is upstairs, next to the blue mugs. The office opens "
    "at 8 and closes at 17. Invoice number {n} was paid on time.\n"
)
SEARCH_P95_TARGET_MS = 500.0


class Tally:
    """Every HTTP answer (retries included) and every call's latency, by kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.refusals = 0
        self.refusals_with_retry_after = 0
        self.failures: list[str] = []
        self.chats = Counter()

    def answer(self, kind: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[kind][response.status_code] += 1
            if response.status_code in (429, 503):
                self.refusals += 1
                if response.headers.get("retry-after", "").isdigit():
                    self.refusals_with_retry_after += 1

    def call(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)


def setup_account(settings: Settings, index: int) -> dict[str, str]:
    name = f"load-{index}-{time.time_ns()}"
    instance = {"name": "assistant", "knowledge": True, "max_tokens": 16}
    return bench_account(settings, name, instance, scopes=("manage", "inference"))[1]


def seed_documents(url: str, keys: dict[str, str]) -> None:
    with httpx.Client(base_url=url, headers=bearer(keys["manage"]), timeout=60) as api:
        for n in range(3):
            files = {"file": (f"notes-{n}.md", DOCUMENT.format(n=n).encode())}
            api.post("/api/documents", files=files).raise_for_status()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            documents = api.get("/api/documents").json()
            if all(d["status"] in ("ready", "failed") for d in documents):
                return
            time.sleep(0.5)
    raise RuntimeError("the seed documents were not indexed within 5 minutes")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_loop(url: str, keys: dict[str, str], seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    hook = {"response": [lambda response: tally.answer("chat (`/v1`)", response)]}
    with (
        httpx.Client(base_url=url, headers=bearer(keys["manage"]), timeout=300) as api,
        httpx.Client(event_hooks=hook, timeout=300) as sdk_http,
    ):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["inference"], http_client=sdk_http)
        n = 0
        while time.monotonic() < deadline:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            began = time.perf_counter()
            try:
                if kind == "chat (`/v1`)":
                    tally.chats["asked"] += 1
                    sdk.chat.completions.create(
                        model="assistant",
                        messages=[{"role": "user", "content": f"Name a colour ({seed}-{n})."}],
                        max_tokens=16,
                    )
                    tally.chats["answered"] += 1
                else:
                    if kind == "search":
                        response = api.get("/api/search", params={"q": rng.choice(QUERIES)})
                    elif kind == "list documents":
                        response = api.get("/api/documents")
                    else:
                        body = DOCUMENT.format(n=f"{seed}-{n}").encode()
                        files = {"file": (f"upload-{seed}-{n}.md", body)}
                        response = api.post("/api/documents", files=files)
                    tally.answer(kind, response)
            except openai.APIStatusError as exc:  # its last attempt, counted by the hook
                tally.failures.append(f"chat: {exc.status_code} after the SDK's retries")
            except (httpx.HTTPError, openai.APIConnectionError) as exc:
                tally.failures.append(f"{kind}: {type(exc).__name__}")
            tally.call(kind, time.perf_counter() - began)
            n += 1


def run_variant(url: str, accounts_keys: list[dict[str, str]], clients: int, seconds: float):
    tally = Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=client_loop,
            args=(url, accounts_keys[i % len(accounts_keys)], i, deadline, tally),
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def table(tally: Tally) -> tuple[list[str], list[list[str]]]:
    header = ["kind", "requests", "statuses", "p50", "p95"]
    rows = []
    for kind in KINDS:
        statuses = tally.statuses[kind]
        latencies = tally.latencies[kind]
        rows.append(
            [
                kind,
                f"{len(latencies):,}",
                ", ".join(f"{code} × {n:,}" for code, n in sorted(statuses.items())),  # noqa: RUF001
                f"{percentile(latencies, 50) * 1000:.0f} ms",
                f"{percentile(latencies, 95) * 1000:.0f} ms",
            ]
        )
    return header, rows


def verdicts(tally: Tally) -> list[str]:
    errors = sum(c for s in tally.statuses.values() for code, c in s.items() if code >= 500)
    search_p95 = percentile(tally.latencies["search"], 95) * 1000
    asked, answered = tally.chats["asked"], tally.chats["answered"]
    return [
        f"5xx: {errors} ({'PASS' if errors == 0 else 'FAIL'})",
        f"429/503 with Retry-After: {tally.refusals_with_retry_after} of {tally.refusals} "
        f"({'PASS' if tally.refusals_with_retry_after == tally.refusals else 'FAIL'})",
        f"chats answered with the SDK's default retries: {answered} of {asked} "
        f"({'PASS' if answered == asked else 'FAIL'})",
        f"search p95: {search_p95:.0f} ms (target ≤ {SEARCH_P95_TARGET_MS:.0f} ms: "
        f"{'PASS' if search_p95 <= SEARCH_P95_TARGET_MS else 'FAIL'})",
        *(f"failed call: {f}" for f in sorted(set(tally.failures))),
    ]


def checks_after(data_dir: Path) -> list[str]:
    audit = subprocess.run(
        [sys.executable, "-m", "appliance", "kb", "audit"],
        env={**os.environ, "APPLIANCE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    connection = sqlite3.connect(Settings.load(data_dir=data_dir, environ={}).paths.database)
    try:
        integrity = connection.execute("pragma integrity_check").fetchone()[0]
    finally:
        connection.close()
    return [
        f"kb audit: {audit.stdout.strip().splitlines()[-1] if audit.stdout.strip() else '?'}",
        f"integrity_check: {integrity}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--url", help="the running appliance's web URL")
    parser.add_argument("--data-dir", type=Path, help="its data dir (to add bench accounts)")
    parser.add_argument("--start", action="store_true", help="start a fresh appliance")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--variants", default="1,2", help="accounts per variant")
    args = parser.parse_args(argv)
    if not args.start and not (args.url and args.data_dir):
        parser.error("give --url and --data-dir of a running appliance, or --start")
    with contextlib.ExitStack() as stack:
        if args.start:
            args.data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "data"
            print(f"starting appliance up on {args.data_dir} …", flush=True)
            appliance = start_up(args.data_dir)
            stack.callback(appliance.stop, 30)
            args.url = appliance.url
        settings = Settings.load(data_dir=args.data_dir, environ={})
        sections = []
        for count in (int(v) for v in args.variants.split(",")):
            keys = [setup_account(settings, i) for i in range(count)]
            for account_keys in keys:
                seed_documents(args.url, account_keys)
            load = load_average()
            print(f"\n{count} account(s), {args.clients} clients, {args.seconds:.0f} s …")
            tally = run_variant(args.url, keys, args.clients, args.seconds)
            header, rows = table(tally)
            lines = verdicts(tally)
            print(markdown_table(header, rows))
            print("\n".join(lines))
            sections.append((count, header, rows, lines, load))
        after = checks_after(args.data_dir) if args.start else []
        print("\n".join(after))
    if args.record:
        record(args, sections, after)
    return 0


def record(args, sections, after: list[str]) -> None:
    machine = machine_info()
    out = [
        f"{datetime.now(UTC):%Y-%m-%d}, {code_version()}, {machine.get('cpu', '?')} "
        f"({machine.get('cores', '?')}); {'a fresh `appliance up`' if args.start else args.url}"
        f" with its defaults; {args.clients} clients for {args.seconds:.0f} s per variant.",
    ]
    for count, header, rows, lines, load in sections:
        out += ["", f"{count} account(s) (load average before: {load}):", ""]
        out += [markdown_table(header, rows), ""]
        out += [f"- {line}" for line in lines]
    if after:
        out += ["", "Afterwards: " + "; ".join(after) + "."]
    append_to_doc(SECTION, "\n".join(out))


if __name__ == "__main__":
    raise SystemExit(main())
