"""``create_app(settings)``: the web service as a Litestar application."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import sqlite_utils
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

import appliance
from appliance import vault
from appliance.config import Settings
from appliance.db import open_db
from appliance.inference.client import InferenceClient
from appliance.web import health, pages
from appliance.web.errors import EXCEPTION_HANDLERS
from appliance.web.security import (
    add_security_headers,
    cross_site_middleware,
    strip_internal_headers_middleware,
)

WEBUI = Path(appliance.__file__).resolve().parent.parent / "webui"

#: Navigation of the base layout, in order. An entry is shown once its page exists.
NAV = (
    ("Chat", "/chat"),
    ("Knowledge", "/knowledge"),
    ("Instances", "/instances"),
    ("Billing", "/billing"),
    ("Settings", "/settings"),
    ("Admin", "/admin"),
)


def create_app(settings: Settings) -> Litestar:
    """Build the web application for ``settings`` (opens nothing until a request comes)."""
    if not (WEBUI / "templates").is_dir():
        raise RuntimeError(f"web assets not found in {WEBUI}: install the package editable")
    https = settings.public_url.startswith("https://")

    def provide_settings() -> Settings:
        return settings

    def provide_db() -> Iterator[sqlite_utils.Database]:
        db = open_db(settings)
        try:
            yield db
        finally:
            db.close()

    def provide_inference() -> InferenceClient:
        return InferenceClient.from_settings(settings)

    controllers = [health.HealthController, pages.PagesController]
    app = Litestar(
        route_handlers=[
            *controllers,
            create_static_files_router(path="/static", directories=[WEBUI / "static"]),
        ],
        dependencies={
            "settings": Provide(provide_settings, sync_to_thread=False),
            "db": Provide(provide_db),
            "inference": Provide(provide_inference, sync_to_thread=False),
        },
        template_config=TemplateConfig(
            engine=JinjaTemplateEngine.from_environment(_jinja_env(settings)),
        ),
        csrf_config=CSRFConfig(
            secret=vault.read_secret(settings, "session_key"),
            cookie_name="__Host-csrf" if https else "csrf",
            cookie_secure=https,
            cookie_samesite="lax",
            exclude=["/v1/"],
        ),
        middleware=[strip_internal_headers_middleware, cross_site_middleware],
        before_send=[add_security_headers],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Appliance API",
            version=appliance.__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        logging_config=None,  # the CLI configures logging once for every service
    )
    app.state.settings = settings
    app.state.nav = [item for item in NAV if _has_route(app, item[1])]
    app.template_engine.engine.globals["nav"] = app.state.nav
    return app


def _jinja_env(settings: Settings) -> Environment:
    env = Environment(
        loader=FileSystemLoader(WEBUI / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        version=appliance.__version__,
        company=settings.privacy.company_legal_name,
    )
    return env


def _has_route(app: Litestar, path: str) -> bool:
    return any(route.path == path for route in app.routes)


__all__ = ["NAV", "create_app"]
