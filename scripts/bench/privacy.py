"""Measure the privacy machinery: request-log cost, purge and erasure rates, export size.

Usage::

    .venv/bin/python scripts/bench/privacy.py [--messages 20000] [--log-rows 100000]

In a fresh data dir (``initialise``, real ``open_db``): the cost of one request-log row
(``requestlog.record`` on a fresh connection, and on the one held connection the web
service writes through) and of a
``GET /healthz`` through the real app; a purge of ``--log-rows`` expired request-log rows
in batches of ``privacy.purge_batch_size``; then an account with ``--messages`` chat
messages (in conversations of 10, their FTS5 rows by trigger), 100 documents on disk and 5
voice samples is exported (ZIP) and erased (``erasure.erase_account``, receipt included).
Prints one table; ``--record`` appends it to docs/benchmarks.md with the machine and date.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from common import (
    bench_args,
    code_version,
    cpu_model,
    fresh_settings,
    markdown_table,
    print_and_record,
    setup_table,
)
from litestar.testing import TestClient
from sqlite_utils.utils import sqlite3

from appliance.accounts import service as accounts
from appliance.clock import iso
from appliance.db import open_db, write_transaction
from appliance.ids import new_id
from appliance.knowledge import service as knowledge
from appliance.persona import voice
from appliance.privacy import erasure, export, requestlog, retention
from appliance.privacy.requestlog import RequestEntry
from appliance.tasks import create_queue
from appliance.web import create_app

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    args = bench_args(__doc__, messages=20_000, log_rows=100_000)
    settings = fresh_settings("privacy")
    rows = []

    # Request log: one row on a fresh connection, and a whole request through the app.
    entry = RequestEntry(iso(NOW), "GET", "/healthz", 200, 1.0, None, None)
    costs = []
    for _ in range(300):
        start = time.perf_counter()
        db = open_db(settings)
        requestlog.record(db, entry)
        db.close()
        costs.append((time.perf_counter() - start) * 1000)
    rows.append(("request-log row (open, insert, close)", f"p50 {statistics.median(costs):.2f} ms"))
    db = open_db(settings)
    costs = []
    for _ in range(300):
        start = time.perf_counter()
        requestlog.record(db, entry)
        costs.append((time.perf_counter() - start) * 1000)
    db.close()
    rows.append(
        (
            "request-log row (insert on a held connection, as the web does)",
            f"p50 {statistics.median(costs):.2f} ms",
        )
    )
    app = create_app(settings, queue=create_queue(settings, immediate=True))
    with TestClient(app) as client:
        latencies = []
        for _ in range(300):
            start = time.perf_counter()
            client.get("/healthz")
            latencies.append((time.perf_counter() - start) * 1000)
    rows.append(("GET /healthz incl. its row", f"p50 {statistics.median(latencies):.2f} ms"))

    # Purge of expired request-log rows.
    db = open_db(settings)
    old = iso(NOW - timedelta(days=90))
    with write_transaction(db):
        db.conn.executemany(
            "insert into request_log (at, method, path, status, duration_ms) "
            "values (?, 'GET', '/api/me', 200, 1.0)",
            [(old,)] * args.log_rows,
        )
    result, seconds = timed(lambda: retention.run_job(db, settings, "request_log", NOW))
    rows.append(
        (
            f"purge {result.deleted:,} request-log rows",
            f"{seconds:.2f} s ({result.deleted / seconds:,.0f} rows/s)",
        )
    )

    # An account with content: export, then erase.
    owner, account = accounts.create_user(db, "bench@example.com", NOW)
    instance_id = new_id("inst")
    with write_transaction(db):
        db.execute(
            "insert into instances (id, account_id, name, model, temperature, top_p, "
            "max_tokens, context_budget, state, created_at, updated_at) "
            "values (?, ?, 'main', 'tiny', 0.7, 0.9, 256, 2048, 'running', ?, ?)",
            [instance_id, account.id, iso(NOW), iso(NOW)],
        )
        for c in range(args.messages // 10):
            conversation = new_id("conv")
            db.execute(
                "insert into conversations (id, account_id, user_id, instance_id, title, "
                "created_at, updated_at) values (?, ?, ?, ?, 'bench', ?, ?)",
                [conversation, account.id, owner.id, instance_id, iso(NOW), iso(NOW)],
            )
            db.conn.executemany(
                "insert into messages (id, conversation_id, account_id, position, role, "
                "content, created_at) values (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        new_id("msg"),
                        conversation,
                        account.id,
                        p,
                        "user" if p % 2 == 0 else "assistant",
                        f"Message {p} of conversation {c} about orders, invoices and deliveries.",
                        iso(NOW),
                    )
                    for p in range(10)
                ],
            )
    for n in range(100):
        knowledge.add_document(
            db,
            settings,
            account.id,
            owner.id,
            f"doc{n}.md",
            io.BytesIO(f"# Doc {n}\n\n".encode() + b"Some text. " * 2000),
            NOW,
        )
    for n in range(5):
        voice.add_sample(
            db,
            settings,
            account.id,
            "owner",
            f"v{n}.txt",
            (f"Sample {n}. " + "We write warmly and briefly to our customers. " * 40).encode(),
            NOW,
        )
    job = export.start(db, settings, account.id, owner.id, NOW)
    built, seconds = timed(lambda: export.build(db, settings, job.id, NOW))
    rows.append(
        (
            f"export ({args.messages:,} messages, 100 docs, 5 samples)",
            f"{seconds:.2f} s, ZIP {built.size / 1e6:.1f} MB",
        )
    )
    erasure.request_deletion(
        db,
        settings,
        account.id,
        requested_by="operator",
        request="bench",
        notify_email=None,
        now=NOW,
    )
    receipt, seconds = timed(lambda: erasure.erase_account(db, settings, account.id, NOW))
    erased = sum(receipt.body["counts"].values())
    rows.append(
        (
            f"erase the account ({erased:,} rows, {len(receipt.body['files'])} files)",
            f"{seconds:.2f} s ({erased / seconds:,.0f} rows/s)",
        )
    )
    db.close()

    setup = [
        ["Date", f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"],
        ["Code", code_version()],
        [
            "Machine",
            f"{cpu_model()}, {os.cpu_count()} logical cores, Python {sys.version.split()[0]}, "
            f"SQLite {sqlite3.sqlite_version}",
        ],
        [
            "Settings",
            f"privacy.purge_batch_size {settings.privacy.purge_batch_size}, secure_delete on, WAL",
        ],
    ]
    blocks = (
        "## Privacy (scripts/bench/privacy.py)",
        setup_table(setup),
        markdown_table(["Measurement", "Result"], rows),
    )
    print_and_record(args.record, *blocks)


if __name__ == "__main__":
    main()
