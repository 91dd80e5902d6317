"""The request log: every response is recorded, content-free (see privacy/requestlog.py).

``timer_middleware`` (it runs once a route matched) notes the start time and
``note_exception`` (an ``after_exception`` hook) the error class of anything a handler
raised; the ``before_send`` hook writes the row and a JSON log line when the last body
chunk goes out, so error responses, streamed answers and unknown paths are all recorded
with their real status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.clock import Clock, iso
from appliance.config import Settings
from appliance.db import pooled
from appliance.errors import ApplianceError
from appliance.privacy import requestlog
from appliance.privacy.requestlog import RequestEntry

log = logging.getLogger("appliance.request")

_START = "appliance.request_started"
_ERROR = "appliance.request_error"
_STATUS = "appliance.response_status"
UNMATCHED = "<unmatched>"


def timer_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_START] = time.perf_counter()  # type: ignore[literal-required]
        await app(scope, receive, send)

    return middleware


async def note_exception(exc: Exception, scope: Scope) -> None:
    """``after_exception`` hook: the error class (and, for unexpected errors only, the
    redacted message) of whatever a handler raised, for the request-log row."""
    user_facing = isinstance(exc, ApplianceError | HTTPException)
    scope[_ERROR] = requestlog.error_text(exc, user_facing=user_facing)  # type: ignore[literal-required]


def recorder(settings: Settings, clock: Clock) -> Callable[[Message, Scope], Awaitable[None]]:
    """The ``before_send`` hook that writes one request-log row per response."""

    def write(entry: RequestEntry) -> None:
        # A request log that cannot be written (disk full, database locked too long) must
        # not fail the response: the JSON log line above has the same fields.
        try:
            with pooled(settings) as db:
                requestlog.record(db, entry)
        except Exception as exc:
            log.warning("request log not written: %s", type(exc).__name__)

    async def hook(message: Message, scope: Scope) -> None:
        if scope["type"] != "http":
            return
        if message["type"] == "http.response.start":
            scope[_STATUS] = message["status"]  # type: ignore[literal-required]
            return
        if message["type"] != "http.response.body" or message.get("more_body", False):
            return
        started = scope.get(_START)
        entry = RequestEntry(
            at=iso(clock()),
            method=scope["method"],
            path=scope.get("path_template") or UNMATCHED,
            status=int(scope.get(_STATUS, 0)),
            duration_ms=(time.perf_counter() - started) * 1000 if started else 0.0,
            instance_id=_instance_id(scope),
            error=scope.get(_ERROR),
        )
        fields = {"fields": {"request": entry.__dict__}}
        log.info("%s %s %d", entry.method, entry.path, entry.status, extra=fields)
        await anyio.to_thread.run_sync(write, entry)

    return hook


def _instance_id(scope: Scope) -> str | None:
    params = scope.get("path_params") or {}
    value = params.get("instance_id")
    if isinstance(value, str):
        return value
    state = scope.get("state") or {}
    # A handler that picks the instance itself (/v1 by model name) sets
    # ``request.state.instance_id``; otherwise a key bound to an instance names it.
    if isinstance(state.get("instance_id"), str):
        return state["instance_id"]
    key = getattr(state.get("identity"), "key", None)
    return getattr(key, "instance_id", None)
