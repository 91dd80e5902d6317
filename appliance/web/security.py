"""Security headers on every response, and the cross-site check on state-changing routes."""

from __future__ import annotations

from urllib.parse import urlsplit

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.inference.client import INTERNAL_HEADERS

CSP = "; ".join(
    [
        "default-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "img-src 'self' data:",
        "form-action 'self'",
    ]
)
HSTS = "max-age=31536000; includeSubDomains"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Routes authenticated by something other than a browser cookie (bearer keys, signatures).
CROSS_SITE_EXEMPT = ("/v1/",)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the headers from SECURITY.md on every HTTP response.

    A hook rather than a middleware so that responses produced outside any route (an
    unknown path's 404) get them too.
    """
    if scope["type"] == "http" and message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["X-Frame-Options"] = "DENY"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if scope.get("scheme") == "https":
            headers["Strict-Transport-Security"] = HSTS


def strip_internal_headers_middleware(app: ASGIApp) -> ASGIApp:
    """Drop the inference service's internal headers from anything a user sends.

    The account id and priority reach the inference service only from our own client.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["headers"] = [
                (name, value)
                for name, value in scope["headers"]
                if name.lower().decode("latin-1") not in INTERNAL_HEADERS
            ]
        await app(scope, receive, send)

    return middleware


def cross_site_middleware(app: ASGIApp) -> ASGIApp:
    """Refuse state-changing requests a browser marks as cross-site (403).

    Complements the CSRF token: browsers send ``Sec-Fetch-Site`` and ``Origin`` on
    unsafe requests, and neither can be forged by a page on another site.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in SAFE_METHODS
            and not scope["path"].startswith(CROSS_SITE_EXEMPT)
        ):
            headers = MutableScopeHeaders(scope)
            if is_cross_site(headers.get("sec-fetch-site"), headers.get("origin"), headers):
                await _forbidden(send)
                return
        await app(scope, receive, send)

    return middleware


def is_cross_site(fetch_site: str | None, origin: str | None, headers: MutableScopeHeaders) -> bool:
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True
    if origin and origin != "null":
        host = headers.get("host", "")
        return urlsplit(origin).netloc != host
    return origin == "null"


async def _forbidden(send: Send) -> None:
    body = b'{"error":{"message":"Cross-site request refused.","type":"forbidden"}}'
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
