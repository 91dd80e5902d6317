"""Benchmark ``appliance backup`` while another process writes, and the restore.

Usage::

    .venv/bin/python scripts/bench/backup.py [--rows N] [--files-mb N] [--record]

Builds a throw-away data dir with ``--rows`` accounts (100-byte names) and ``--files-mb``
of random uploads, starts a second process that commits one account per transaction
through the real service as fast as it can, and after 3 s takes a backup in this
process. Reports the archive's size and time, the writer's commits/s in the 3 s before
and during the backup (a backup that blocked writers would show ~0), and the time of a
restore (verification, extraction, integrity_check) into another dir. ``--record``
appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from common import (
    bench_args,
    fresh_settings,
    markdown_table,
    print_and_record,
    run_stamp,
)

from appliance.clock import utcnow
from appliance.config import Settings
from appliance.db import open_db
from appliance.ops import backup

WRITER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from appliance.accounts import service as accounts
    from appliance.config import Settings
    from appliance.db import open_db
    db = open_db(Settings.load())
    log = open(sys.argv[1], "a", buffering=1)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        accounts.create_account(db, "load", datetime.now(UTC))
        log.write(f"{time.monotonic()}\\n")
    """
)


def main() -> None:
    args = bench_args(__doc__, rows=200_000, files_mb=50)

    settings = fresh_settings("backup")
    root = settings.paths.data_dir.parent
    db = open_db(settings)
    with db.atomic():
        db.conn.executemany(
            "insert into accounts (id, name, status, created_at) values (?, ?, 'active', ?)",
            [(f"acc_fill{i:07d}", "x" * 100, "2026-01-01") for i in range(args.rows)],
        )
    db.close()
    uploads = settings.paths.files / "acc_bench"
    uploads.mkdir(parents=True)
    for i in range(args.files_mb):
        (uploads / f"f{i}").write_bytes(os.urandom(1 << 20))

    log = root / "commits.log"
    env = {**os.environ, "APPLIANCE_DATA_DIR": str(settings.paths.data_dir)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), "60"], env=env)
    try:
        time.sleep(3.5)
        start = time.monotonic()
        info = backup.backup(settings, root / "backups", utcnow())
        took = time.monotonic() - start
        time.sleep(0.5)
    finally:
        writer.kill()
        writer.wait()
    stamps = [float(x) for x in log.read_text().split()]
    before = sum(1 for t in stamps if start - 3 <= t < start) / 3
    during = sum(1 for t in stamps if start <= t < start + took) / took

    target = Settings.load(data_dir=root / "restored", environ={})
    start = time.monotonic()
    backup.restore(target, info.path)
    restore_took = time.monotonic() - start

    database_mb = settings.paths.database.stat().st_size / 2**20
    data = f"{database_mb:.1f} MB database ({args.rows:,} filler rows) + {args.files_mb} MB uploads"
    rows = [
        ("Data", data),
        ("Archive", f"{info.path.stat().st_size / 2**20:.1f} MB, {info.files} files"),
        ("Backup time (VACUUM INTO, integrity_check, tar.gz)", f"{took:.2f} s"),
        ("Writer commits/s, 3 s before the backup", f"{before:,.0f}"),
        ("Writer commits/s, during the backup", f"{during:,.0f}"),
        ("Restore time (verify, extract, integrity_check)", f"{restore_took:.2f} s"),
    ]  # fmt: skip
    blocks = (
        "## Backup under write load (scripts/bench/backup.py)",
        f"Run {run_stamp()}.",
        markdown_table(["Measurement", "Value"], rows),
    )
    print_and_record(args.record, *blocks)


if __name__ == "__main__":
    main()
