"""``create_app(settings)``: the web service as a Litestar application."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import sqlite_utils
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Request
from litestar.config.csrf import CSRFConfig
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from sqlite_utils.utils import sqlite3  # pysqlite3 when installed, as the connections

import appliance
from appliance import vault
from appliance.clock import Clock, utcnow
from appliance.config import Settings
from appliance.db import pooled
from appliance.errors import DatabaseError
from appliance.inference.client import InferenceClient, kept_connections
from appliance.privacy import policy
from appliance.tasks import TaskQueue, create_queue
from appliance.web import (
    admin,
    billing,
    chat,
    deps,
    flash,
    health,
    identity,
    instances,
    invites,
    knowledge,
    pages,
    persona,
    privacy,
    requestlog,
    signin,
    team,
    v1,
)
from appliance.web.cors import cors_middleware
from appliance.web.errors import EXCEPTION_HANDLERS
from appliance.web.security import (
    CSRF_EXEMPT,
    DEFAULT_BODY_LIMIT,
    add_security_headers,
    body_limit_middleware,
    cross_site_middleware,
    strip_internal_headers_middleware,
)

WEBUI = Path(appliance.__file__).resolve().parent / "webui"

#: Navigation of the base layout, in order. An entry is shown once its page exists.
NAV = (
    ("Chat", "/chat"),
    ("Knowledge", "/knowledge"),
    ("Instances", "/instances"),
    ("Billing", "/billing"),
    ("Settings", "/settings"),
    ("Admin", "/admin"),
)


def create_app(
    settings: Settings, *, clock: Clock = utcnow, queue: TaskQueue | None = None
) -> Litestar:
    """Build the web application for ``settings`` (opens nothing until a request comes).

    Args:
        clock: the time source (tests move it instead of sleeping).
        queue: the task queue; default: the SqliteHuey queue in the data dir.
    """
    if not (WEBUI / "templates").is_dir():
        raise RuntimeError(f"web assets not found in {WEBUI}: install the package editable")
    https = settings.public_url.startswith("https://")

    async def provide_db() -> AsyncIterator[sqlite_utils.Database]:
        # Async, so that Litestar ends it on the event loop, as it starts it: a sync
        # generator's end runs on a thread, a hop between the handler and the response.
        with pooled(settings) as db:
            yield db

    task_queue = queue or create_queue(settings)

    # Made once, at its first use: its key is read from the vault, not once a request.
    inference = functools.cache(lambda: InferenceClient.from_settings(settings))

    def provide_ctx(request: Request, db: NamedDependency[sqlite_utils.Database]) -> deps.Ctx:
        return deps.Ctx(request, db, settings, clock, task_queue, inference)

    controllers = [
        health.HealthController,
        pages.PagesController,
        signin.SignInApi,
        signin.MeApi,
        signin.SignInPages,
        invites.InvitesApi,
        invites.InvitesPages,
        team.TeamApi,
        team.TeamPages,
        persona.PersonaApi,
        persona.PersonaPages,
        privacy.PrivacyPages,
        privacy.PrivacyApi,
        privacy.MyDataPages,
        knowledge.KnowledgeApi,
        knowledge.KnowledgePages,
        instances.InstancesApi,
        instances.InstancesPages,
        chat.ChatApi,
        chat.ChatPages,
        billing.BillingApi,
        billing.BillingPages,
        billing.StripeWebhook,
        v1.V1Api,
        admin.AdminApi,
        admin.AdminPages,
        admin.PolicyAdminPages,
    ]
    app = Litestar(
        route_handlers=[
            *controllers,
            create_static_files_router(path="/static", directories=[WEBUI / "static"]),
        ],
        dependencies={
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "db": Provide(provide_db),
            "queue": Provide(lambda: task_queue, sync_to_thread=False),
            "clock": Provide(lambda: clock, sync_to_thread=False),
            "ctx": Provide(provide_ctx, sync_to_thread=False),
            "identity": Provide(deps.provide_identity, sync_to_thread=False),
            "me": Provide(deps.provide_me, sync_to_thread=False),
            "manager": Provide(deps.provide_manager, sync_to_thread=False),
            "api_key": Provide(deps.provide_api_key, sync_to_thread=False),
            "person": Provide(deps.provide_person, sync_to_thread=False),
        },
        template_config=TemplateConfig(
            engine=JinjaTemplateEngine.from_environment(_jinja_env(settings)),
        ),
        csrf_config=CSRFConfig(
            secret=vault.read_secret(settings, "session_key"),
            cookie_name=identity.cookie_names(settings)["csrf"],
            cookie_secure=https,
            cookie_samesite="lax",
            exclude=list(CSRF_EXEMPT),
        ),
        middleware=[
            cors_middleware(settings),
            strip_internal_headers_middleware,
            cross_site_middleware,
            requestlog.timer_middleware,
            body_limit_middleware(settings),
        ],
        request_max_body_size=DEFAULT_BODY_LIMIT,
        before_send=[add_security_headers, flash.clear_shown, requestlog.recorder(settings, clock)],
        after_exception=[requestlog.note_exception],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Appliance API",
            version=appliance.__version__,
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        logging_config=None,  # the CLI configures logging once for every service
        lifespan=[lambda _app: kept_connections()],
    )
    app.state.settings = settings
    app.state.inference_probe = health.InferenceProbe()
    app.state.nav = [item for item in NAV if any(r.path == item[1] for r in app.routes)]
    app.template_engine.engine.globals["nav"] = app.state.nav
    return app


def _operator_name(settings: Settings) -> str:
    """The page footer's name: the operator as named at setup or on /admin, else
    ``privacy.company_legal_name`` (also when the database cannot be read, as on an error
    page about it)."""
    if not settings.paths.database.exists():
        return settings.privacy.company_legal_name
    try:
        with pooled(settings) as db:
            return policy.operator_name(db, settings)
    except (sqlite3.Error, DatabaseError):
        return settings.privacy.company_legal_name


def _jinja_env(settings: Settings) -> Environment:
    env = Environment(
        loader=FileSystemLoader(WEBUI / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        app_version=appliance.__version__,
        flash=flash.flash,
        public_url=settings.public_url,
        company=lambda: _operator_name(settings),
        minimum_age=settings.privacy.minimum_age,
        current=identity.current,
        csrf_cookie=identity.cookie_names(settings)["csrf"],
    )
    env.filters["minute"] = lambda stamp: _stamp(stamp, 16)
    env.filters["second"] = lambda stamp: _stamp(stamp, 19)
    return env


def _stamp(stamp: str | None, width: int) -> str:
    """A stored timestamp as the pages show it: ``2026-01-31 09:05`` (16) or ``…:05:42`` (19)."""
    return stamp[:width].replace("T", " ") if stamp else ""


__all__ = ["NAV", "create_app"]
