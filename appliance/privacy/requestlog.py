"""The request log: one content-free row per web request.

A row holds the time, the method, the route *template* (``/api/knowledge/{document_id}``,
never the concrete path or its query string), the status, the duration, the instance id
when the request was bound to one, and for failures the error class (plus, for
unexpected errors only, the redacted message: domain errors may echo what the user sent,
such as a file name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from appliance.clock import iso
from appliance.db import write_transaction
from appliance.privacy.logs import redact

MAX_ERROR = 300


@dataclass(frozen=True)
class RequestEntry:
    at: str
    method: str
    path: str
    status: int
    duration_ms: float
    instance_id: str | None
    error: str | None


def error_text(exc: BaseException, *, user_facing: bool) -> str:
    """``Class`` for errors shown to users (they may quote input), else ``Class: message``."""
    name = type(exc).__name__
    if user_facing:
        return name
    message = redact(str(exc))[:MAX_ERROR]
    return f"{name}: {message}" if message else name


def record(db: sqlite_utils.Database, entry: RequestEntry) -> None:
    with write_transaction(db):
        db.execute(
            """insert into request_log (at, method, path, status, duration_ms, instance_id,
                                        error) values (?, ?, ?, ?, ?, ?, ?)""",
            [
                entry.at,
                entry.method,
                entry.path,
                entry.status,
                round(entry.duration_ms, 3),
                entry.instance_id,
                entry.error,
            ],
        )


def entries(
    db: sqlite_utils.Database,
    *,
    since: datetime | None = None,
    status: str | None = None,
    path: str | None = None,
    limit: int = 200,
) -> list[RequestEntry]:
    """Newest first. ``status`` is ``404`` or a class such as ``5xx``; ``path`` a prefix."""
    sql = (
        "select at, method, path, status, duration_ms, instance_id, error "
        "from request_log where 1 = 1"
    )
    params: list = []
    if since is not None:
        sql += " and at >= ?"
        params.append(iso(since))
    if status:
        if len(status) == 3 and status.endswith("xx") and status[0].isdigit():
            low = int(status[0]) * 100
            sql += " and status >= ? and status < ?"
            params += [low, low + 100]
        else:
            sql += " and status = ?"
            params.append(int(status))
    if path:
        sql += " and path like ? escape '\\'"
        params.append(path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    sql += " order by at desc, id desc limit ?"
    params.append(limit)
    return [RequestEntry(*row) for row in db.execute(sql, params)]
