"""Domain errors → HTTP statuses, in one place.

API routes (``/api``, ``/v1``) get an OpenAI-shaped JSON error; pages get the error page.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template

from appliance.errors import (
    ApplianceError,
    ConfigError,
    Conflict,
    DatabaseError,
    InvalidInput,
    NotAllowed,
    NotFound,
    PaymentRequired,
    Throttled,
    TooLarge,
    Unavailable,
)
from appliance.web.identity import Identity, LoginRequired

log = logging.getLogger(__name__)

#: OpenAI's error codes for refusals: its SDKs back off and retry on 429 and 503, waiting
#: what ``Retry-After`` says.
CODES = {429: "rate_limit_exceeded", 402: "insufficient_quota", 503: "service_unavailable"}

STATUS = {
    NotFound: (404, "not_found"),
    NotAllowed: (403, "permission_error"),
    InvalidInput: (400, "invalid_request_error"),
    Conflict: (409, "conflict"),
    PaymentRequired: (402, "insufficient_quota"),
    Unavailable: (503, "unavailable"),
    Throttled: (429, "rate_limit_error"),
    TooLarge: (413, "too_large"),
    DatabaseError: (503, "unavailable"),
    ConfigError: (500, "server_error"),
}

TITLES = {
    400: "That didn't work",
    402: "Out of credit",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Already done",
    413: "Too large",
    429: "Slow down",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


def form_error(template: str, context: dict, error: Exception) -> Template:
    """A form's page again, with the domain's message about what was wrong (400)."""
    return Template(
        template, context={**context, "flashes": [("error", str(error))]}, status_code=400
    )


def rerenders(template: str, context: Callable[..., dict], *errors: type[ApplianceError]):
    """A form handler's decorator: one of ``errors`` (default ``InvalidInput``) answers the
    form's page again (``form_error``), drawn with ``context(ctx, caller)``. It goes below
    the route decorator, which reads the handler's signature through ``functools.wraps``."""
    caught = errors or (InvalidInput,)

    def decorate(handler: Callable[..., Response]) -> Callable[..., Response]:
        @functools.wraps(handler)
        def form(*args, **kwargs) -> Response:
            try:
                return handler(*args, **kwargs)
            except caught as exc:
                caller = next(v for v in kwargs.values() if isinstance(v, Identity))
                return form_error(template, context(kwargs["ctx"], caller), exc)

        return form

    return decorate


def wants_json(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/v1/")) or path in ("/healthz", "/readyz"):
        return True
    return "application/json" in request.headers.get("accept", "")


def error_response(
    request: Request, status: int, message: str, kind: str, code: int | str | None = None
) -> Response:
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = "5"
    if wants_json(request):
        return Response(
            {"error": {"message": message, "type": kind, "code": code or status}},
            status_code=status,
            media_type=MediaType.JSON,
            headers=headers,
        )
    return Template(
        template_name="error.html",
        context={"status": status, "title": TITLES.get(status, "Error"), "message": message},
        status_code=status,
        headers=headers,
    )


def handle_domain_error(request: Request, exc: ApplianceError) -> Response:
    status, kind = status_of(exc)
    message = str(exc) if status < 500 or isinstance(exc, Unavailable) else _generic(status)
    response = error_response(request, status, message, kind, CODES.get(status))
    retry_after = retry_after_of(exc)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


def retry_after_of(exc: ApplianceError) -> int | None:
    """Seconds after which a refused request may be sent again (None: not a refusal)."""
    if isinstance(exc, Throttled):
        return exc.retry_after or 1
    if isinstance(exc, Unavailable | DatabaseError):
        return getattr(exc, "retry_after", None) or 5
    return None


def stream_error(exc: ApplianceError) -> dict:
    """What a stream that already answered 200 says when it is refused or broken off:
    the status and ``Retry-After`` the request would have got, and the message."""
    status, kind = status_of(exc)
    return {
        "status": status,
        "retry_after": retry_after_of(exc),
        "message": str(exc) if status < 500 or isinstance(exc, Unavailable) else _generic(status),
        "type": "server_error" if status >= 500 else kind,  # OpenAI's type for 5xx
        "code": CODES.get(status, status),
    }


def status_of(exc: ApplianceError) -> tuple[int, str]:
    return next(
        (value for cls, value in STATUS.items() if isinstance(exc, cls)),
        (500, "server_error"),
    )


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    message = exc.detail if status < 500 else _generic(status)
    kind = "invalid_request_error" if status == 400 else TITLES.get(status, "error").lower()
    response = error_response(request, status, message, kind.replace(" ", "_"))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def handle_login_required(request: Request, exc: LoginRequired) -> Response:
    return Redirect(exc.headers["Location"])


def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The stack goes to the log, without the error's message (it may quote what the
    # client sent) or request bodies; the user gets no internals.
    path = request.scope.get("path_template", "?")
    stack = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    log.error("unhandled %s on %s %s\n%s", type(exc).__name__, request.method, path, stack)
    return error_response(request, 500, _generic(500), "server_error")


def _generic(status: int) -> str:
    if status == 503:
        return "A part of the appliance is not available right now. Please try again shortly."
    return "Something went wrong on our side. The error has been logged."


EXCEPTION_HANDLERS = {
    LoginRequired: handle_login_required,
    ApplianceError: handle_domain_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
