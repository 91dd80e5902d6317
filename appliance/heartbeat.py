"""Worker liveness: the worker writes a heartbeat row; ``doctor`` and the admin page read it."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

import sqlite_utils

from appliance.db import write_transaction

#: The worker's name in ``heartbeats``.
WORKER_SERVICE = "worker"


# This module's migrations: each function mNNN_…, applied once in number order (appliance.db).
def m001_create_heartbeats(db: sqlite_utils.Database) -> None:
    db["heartbeats"].create(
        {"service": str, "host": str, "pid": int, "beat_at": str},
        pk="service",
    )


def beat(db: sqlite_utils.Database, service: str, now: datetime | None = None) -> None:
    """Record that ``service`` is alive now."""
    now = now or datetime.now(UTC)
    with write_transaction(db):
        alive = {"service": service, "host": socket.gethostname(), "pid": os.getpid()}
        db["heartbeats"].upsert({**alive, "beat_at": now.isoformat()}, pk="service")


def last_beat(db: sqlite_utils.Database, service: str) -> datetime | None:
    row = next(db["heartbeats"].rows_where("service = ?", [service]), None)
    return datetime.fromisoformat(row["beat_at"]) if row else None
