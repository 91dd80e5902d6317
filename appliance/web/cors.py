"""CORS for ``/v1`` only: off unless ``web.cors_origins`` lists the origins allowed.

Browser apps on those origins may call ``/v1`` with a bearer key (cookies never authorise
``/v1``, so credentials are not allowed). A preflight from an allowed origin is answered
here with 204; one from any other origin gets no CORS headers, so the browser refuses.
"""

from __future__ import annotations

from collections.abc import Callable

from litestar.datastructures import MutableScopeHeaders
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import Settings

METHODS = "GET, POST, OPTIONS"
MAX_AGE = "600"


def cors_middleware(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    allowed = set(settings.web.cors_origins)

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].startswith("/v1/") or not allowed:
                await app(scope, receive, send)
                return
            headers = MutableScopeHeaders(scope)
            origin = headers.get("origin")
            if origin not in allowed and "*" not in allowed:
                await app(scope, receive, send)
                return
            requested = headers.get("access-control-request-method")
            if scope["method"] == "OPTIONS" and requested:
                asked = headers.get("access-control-request-headers", "")
                preflight = {
                    "access-control-allow-origin": origin,
                    "access-control-allow-methods": METHODS,
                    "access-control-allow-headers": asked,
                    "access-control-max-age": MAX_AGE,
                    "vary": "Origin",
                }
                await ASGIResponse(status_code=204, headers=preflight)(scope, receive, send)
                return

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    out = MutableScopeHeaders.from_message(message)
                    out["Access-Control-Allow-Origin"] = origin
                    out.add("Vary", "Origin")
                await send(message)

            await app(scope, receive, send_with_cors)

        return middleware

    return wrap
