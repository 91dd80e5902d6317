"""The operator page (``/admin``) and its JSON API (``/api/admin/...``).

Only server operators (``users.operator``) see them, signed in or with a key of scope
``admin`` (``appliance keys create --scope admin``); everyone else, signed in or not, and
any other key gets 404, so the page's existence is confirmed to no one else. Each action here also
exists in the CLI (``appliance accounts suspend|unsuspend|delete``, ``appliance admin
status``, ``appliance policy publish``).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import sqlite_utils
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, URLEncodedBody
from litestar.response import Template

from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import ApplianceError, Conflict, InvalidInput, NotFound
from appliance.ops import overview
from appliance.privacy import policy
from appliance.tasks import TaskQueue
from appliance.web import flash
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
        request: Request,
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
        done = {"suspend": "suspended", "unsuspend": "unsuspended", "delete": "deleted"}
        return flash.redirect(request, "/admin", f"Account {done[action]}.")


def _context(db, settings: Settings, clock: Clock) -> dict[str, Any]:
    return {
        "o": overview.overview(db, settings, clock()),
        "settings": settings,
        **policy_context(db, settings, clock()),
    }


# -- the privacy policy -----------------------------------------------------------------


def policy_context(db: sqlite_utils.Database, settings: Settings, now: datetime) -> dict[str, Any]:
    """What the admin page shows of the policy: the operator's details, and the text the
    configuration gives now, with whether it differs from the latest version."""
    draft = policy.render_text(db, settings)
    published = policy.versions(db)
    return {
        "policy_operator": policy.operator(db, settings),
        "policy_draft": policy.blocks(draft),
        "policy_changed": not published or published[-1].text_sha256 != policy.text_hash(draft),
        "policy_notice_days": settings.privacy.policy_notice_days,
    }


def _effective(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput("The effective date must be a date (YYYY-MM-DD).") from None


class PolicyAdminPages(Controller):
    """The privacy policy's part of the page: who runs the appliance, the text this
    configuration gives, and publishing it as a new version (as ``appliance policy
    publish`` does: every user is emailed before it takes effect)."""

    include_in_schema = False
    dependencies = OPERATOR
    path = "/admin/policy"

    @post("/operator", sync_to_thread=True)
    def operator_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Set who runs the appliance and the privacy contact (shown once published)."""
        try:
            policy.set_operator(db, data.get("operator_name", ""), data.get("contact", ""), clock())
        except InvalidInput as exc:
            return _failed(db, settings, clock, exc)
        return flash.redirect(request, "/admin#policy", "Operator and privacy contact saved.")

    @post("/publish", sync_to_thread=True)
    def publish_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        operator: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Publish the text as the configuration gives it now; every user is emailed."""
        now = clock()
        try:
            version = policy.publish(
                db,
                settings,
                now,
                effective_at=_effective(data.get("effective", "")),
                summary=data.get("summary", ""),
            )
        except (InvalidInput, Conflict) as exc:
            return _failed(db, settings, clock, exc)
        policy.announce(db, version, queue.send_mail)
        return flash.redirect(
            request,
            "/admin#policy",
            f"Policy version {version.version} published; every user is emailed.",
        )


def _failed(db, settings: Settings, clock: Clock, exc: Exception) -> Template:
    page = _context(db, settings, clock)
    page["flashes"] = [("error", str(exc))]
    return Template("admin.html", context=page, status_code=400)
