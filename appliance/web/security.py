"""Security headers on every response, the cross-site check on state-changing routes, and
request body limits enforced while the body streams."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from litestar import MediaType
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import Settings
from appliance.inference.client import INTERNAL_HEADERS

CSP = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "img-src 'self' data:; form-action 'self'"
)
HSTS = "max-age=31536000; includeSubDomains"
#: The cross-site check's answer.
REFUSED = b'{"error":{"message":"Cross-site request refused.","type":"forbidden"}}'
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The paths Litestar's CSRF middleware does not check: regexes, anchored at the start of
#: the path. ``/api`` checks the ``X-CSRFToken`` header itself (web/identity.py); ``/v1``
#: takes bearer keys only; Stripe's webhook is authenticated by its signature
#: (web/billing.py).
CSRF_EXEMPT = (r"^/api/", r"^/v1/", r"^/stripe/webhook$")
#: Path prefixes the cross-site check skips: authenticated by bearer keys only, never a
#: browser cookie.
CROSS_SITE_EXEMPT = ("/v1/",)
#: Largest body of a route without a limit of its own (JSON, forms), in bytes. Litestar
#: enforces it on the bytes received, chunked or not.
DEFAULT_BODY_LIMIT = 10_000_000
#: Room for the multipart framing around an uploaded file (boundaries, part headers, the
#: CSRF field).
MULTIPART_OVERHEAD = 64 * 1024
#: A route handler's ``opt`` key for a body limit that depends on the settings: a function
#: ``settings -> (bytes, message)``. The handler sets ``request_max_body_size=None`` when
#: its limit may be larger than ``DEFAULT_BODY_LIMIT``.
BODY_LIMIT = "body_limit"


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


def body_limit_middleware(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    """Cut a body at its route's ``BODY_LIMIT`` + 1 byte and answer 413.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    chunked body is counted as it arrives, so nothing past the limit is read, spooled to
    a temporary file or stored. Outside Litestar's CSRF middleware, which may read a form
    body itself.
    """

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            limit_of = handler.opt.get(BODY_LIMIT) if scope["type"] == "http" else None
            if limit_of is None:
                await app(scope, receive, send)
                return
            limit, message = limit_of(settings)
            declared = MutableScopeHeaders(scope).get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RequestEntityTooLarge(detail=message)
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                event = await receive()
                if event["type"] == "http.request":
                    received += len(event.get("body", b""))
                    if received > limit:
                        raise RequestEntityTooLarge(detail=message)
                return event

            await app(scope, limited_receive, send)

        return middleware

    return factory


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
                refused = ASGIResponse(body=REFUSED, status_code=403, media_type=MediaType.JSON)
                await refused(scope, receive, send)
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
