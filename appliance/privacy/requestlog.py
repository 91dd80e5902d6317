"""The request log: one content-free row per web request.

A row holds the time, the method, the route *template* (``/api/knowledge/{document_id}``,
never the concrete path or its query string), the status, the duration, the instance id
when the request was bound to one, and for failures the error class (plus, for
unexpected errors, where in the code it was raised). Never an error's message: messages
quote what the client sent (a file name, a "number" that was not one).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass, fields
from datetime import datetime

from sqlite_utils import Database

import appliance
from appliance.clock import iso
from appliance.db import write_transaction

MAX_ERROR = 300
_PACKAGE = os.path.dirname(os.path.abspath(appliance.__file__)) + os.sep


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
    """``Class`` for errors shown to users, ``Class at web/x.py:12`` for unexpected ones: the
    innermost frame of our code that the error passed."""
    name = type(exc).__name__
    frames = [] if user_facing else traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_PACKAGE)] or frames
    if not ours:
        return name
    where = f"{ours[-1].filename.removeprefix(_PACKAGE)}:{ours[-1].lineno}"
    return f"{name} at {where[:MAX_ERROR]}"


def record(db: Database, entry: RequestEntry) -> None:
    with write_transaction(db):
        db["request_log"].insert({**asdict(entry), "duration_ms": round(entry.duration_ms, 3)})


def entries(
    db: Database,
    *,
    since: datetime | None = None,
    status: str | None = None,
    path: str | None = None,
    limit: int = 200,
) -> list[RequestEntry]:
    """Newest first. ``status`` is ``404`` or a class such as ``5xx``; ``path`` a prefix."""
    where = ["1 = 1"]
    params: list = []
    if since is not None:
        where.append("at >= ?")
        params.append(iso(since))
    if status:
        if len(status) == 3 and status.endswith("xx") and status[0].isdigit():
            low = int(status[0]) * 100
            where.append("status >= ? and status < ?")
            params += [low, low + 100]
        else:
            where.append("status = ?")
            params.append(int(status))
    if path:
        where.append("path like ? escape '\\'")
        params.append(path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    rows = db["request_log"].rows_where(
        " and ".join(where),
        params,
        select=", ".join(f.name for f in fields(RequestEntry)),
        order_by="at desc, id desc",
        limit=limit,
    )
    return [RequestEntry(**row) for row in rows]
