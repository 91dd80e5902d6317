"""The operator page (``/admin``) and its JSON API (``/api/admin/...``).

Only server operators (``users.operator``) see them, signed in or with a key of scope
``admin`` (``appliance keys create --scope admin``); everyone else, signed in or not, and
any other key gets 404, so the page's existence is confirmed to no one else. Each action here also
exists in the CLI (``appliance accounts suspend|unsuspend|delete``, ``appliance admin
status``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlite_utils
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, URLEncodedBody
from litestar.response import Redirect, Template

from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import ApplianceError, InvalidInput, NotFound
from appliance.ops import overview
from appliance.web import identity as identities
from appliance.web.errors import form_error
from appliance.web.identity import Identity

CONFIRMED = (True, "true", "on", "yes")


def provide_operator(
    request: Request,
    identity: NamedDependency[Identity | None],
    settings: NamedDependency[Settings],
) -> Identity:
    """The operator, signed in or with an ``admin`` key; 404 for anyone else (anonymous,
    and an operator's ordinary keys, included)."""
    if identity is None or not identity.user.operator:
        raise NotFound("Not found.")
    if identity.key is not None:
        if identity.key.scope != auth.ADMIN_SCOPE:
            raise NotFound("Not found.")
        return identity
    # A session: the usual checks of a signed-in request (CSRF on unsafe /api calls).
    return identities.provide_me(request, identity, settings)


OPERATOR = {"operator": Provide(provide_operator, sync_to_thread=False)}


def _act(db, settings: Settings, operator: Identity, account_id: str, action: str, data, now):
    if action == "suspend":
        return overview.suspend(db, account_id, now, actor_id=operator.user.id)
    if action == "unsuspend":
        return overview.unsuspend(db, account_id)
    if action == "delete":
        if data.get("confirm") not in CONFIRMED:
            raise InvalidInput('Deleting erases all its data: confirm it with {"confirm": true}.')
        return overview.delete(db, settings, account_id, now, "operator via admin page")
    raise NotFound("Not found.")


class AdminApi(Controller):
    path = "/api/admin"
    tags = ["admin"]
    dependencies = OPERATOR

    @get("/overview", sync_to_thread=True)
    def status(
        self,
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict[str, Any]:
        """Accounts, inference and GPU state, worker heartbeat, purges, disk use, recent
        server errors and policy versions (operators only)."""
        return overview.overview(db, settings, clock())

    @get("/accounts", sync_to_thread=True)
    def accounts(
        self, operator: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict[str, Any]]:
        """Every account with members, balance, storage and last activity."""
        return [asdict(row) for row in overview.account_rows(db)]

    @post("/accounts/{account_id:str}/{action:str}", status_code=200, sync_to_thread=True)
    def act(
        self,
        account_id: FromPath[str],
        action: FromPath[str],
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
        data: JSONBody[dict[str, Any] | None] = None,
    ) -> dict[str, Any]:
        """``suspend`` (sessions end, keys refused), ``unsuspend``, or ``delete``
        (``{"confirm": true}``: locked now, erased by the privacy purge)."""
        result = _act(db, settings, operator, account_id, action, data or {}, clock())
        return result if isinstance(result, dict) else asdict(result)


class AdminPages(Controller):
    include_in_schema = False
    dependencies = OPERATOR

    @get("/admin", sync_to_thread=True)
    def page(
        self,
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Template:
        return Template("admin.html", context=_context(db, settings, clock))

    @post("/admin/accounts/{account_id:str}/{action:str}", sync_to_thread=True)
    def act_form(
        self,
        account_id: FromPath[str],
        action: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            _act(db, settings, operator, account_id, action, data, clock())
        except ApplianceError as exc:
            if isinstance(exc, NotFound) and action not in ("suspend", "unsuspend", "delete"):
                raise
            return form_error("admin.html", _context(db, settings, clock), exc)
        return Redirect("/admin")


def _context(db, settings: Settings, clock: Clock) -> dict[str, Any]:
    return {"o": overview.overview(db, settings, clock()), "settings": settings}
