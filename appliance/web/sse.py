"""Server-sent events, written one way for the chat page, ``/v1`` and the Responses API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import Stream


def sse(data: Any, event: str | None = None) -> str:
    """One event: ``data`` as JSON (``[DONE]`` and other strings as they are)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def event_stream(events: AsyncIterator[str]) -> Stream:
    """The response carrying ``events``, passed through proxies unbuffered and uncached."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Stream(events, media_type="text/event-stream", headers=headers)
