"""``appliance web``: serve the app with uvicorn, over HTTPS when a certificate is configured.

With ``web.tls_cert``/``web.tls_key`` the web service itself terminates TLS (a system
install on port 443) and adds HSTS (``security.add_security_headers`` sees the https
scheme). ``web.redirect_port`` adds a plain-HTTP listener that only redirects to
``public_url``: it never serves a page, so nothing is readable without TLS.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from appliance.config import Settings
from appliance.errors import ConfigError

log = logging.getLogger(__name__)


def tls_files(settings: Settings) -> tuple[str, str] | None:
    """The certificate and key paths, or None for plain HTTP.

    Raises:
        ConfigError: only one of the two is set, or a file cannot be read.
    """
    cert, key = settings.web.tls_cert, settings.web.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("web.tls_cert and web.tls_key must be set together")
    for name, value in (("web.tls_cert", cert), ("web.tls_key", key)):
        try:
            with Path(value).open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {value}: {exc.strerror}") from None
    return cert, key


def redirect_app(public_url: str):
    """A bare ASGI app answering every request with a 308 to the same path on ``public_url``.

    The target is built from the configured URL, never from the request's Host header,
    so the listener cannot be used as an open redirect.
    """
    base = public_url.rstrip("/")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        target = base + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = {"location": target, "content-type": "text/plain"}
        response = ASGIResponse(body=b"Use HTTPS.\n", status_code=308, headers=headers)
        await response(scope, receive, send)

    return app


def serve(settings: Settings) -> None:
    """Run the web service until SIGINT/SIGTERM."""
    import uvicorn

    from appliance.web import create_app

    tls = tls_files(settings)
    if settings.web.redirect_port and tls is None:
        raise ConfigError("web.redirect_port needs TLS (web.tls_cert and web.tls_key)")
    if settings.web.redirect_port and not settings.public_url.startswith("https://"):
        raise ConfigError("web.redirect_port needs web.public_url to be an https:// URL")
    app = create_app(settings)
    if settings.web.redirect_port:
        redirect = uvicorn.Server(
            uvicorn.Config(
                redirect_app(settings.public_url),
                host=settings.web.host,
                port=settings.web.redirect_port,
                access_log=False,
                log_config=None,
                lifespan="off",
            )
        )
        # Outside the main thread uvicorn installs no signal handlers: the main server
        # owns SIGINT/SIGTERM, and this daemon thread ends with the process.
        threading.Thread(target=redirect.run, name="http-redirect", daemon=True).start()
        log.info(
            "redirecting http on port %d to %s", settings.web.redirect_port, settings.public_url
        )
    scheme = "https" if tls else "http"
    log.info("web service listening on %s://%s:%d", scheme, settings.web.host, settings.web.port)
    uvicorn.run(
        app,
        host=settings.web.host,
        port=settings.web.port,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        access_log=False,  # the request log (path templates, no query strings) replaces it
        log_config=None,
        proxy_headers=bool(settings.web.trusted_proxies),
        forwarded_allow_ips=list(settings.web.trusted_proxies) or None,
        timeout_graceful_shutdown=5,
    )
