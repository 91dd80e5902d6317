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
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from litestar.response import Template

from appliance.auth import service as auth
from appliance.config import Settings
from appliance.errors import ApplianceError, Conflict, InvalidInput, NotFound
from appliance.ops import overview
from appliance.privacy import policy
from appliance.web.deps import YES, Ctx, Deps, Form, Member, provide_me
from appliance.web.errors import form_error, rerenders
from appliance.web.identity import Identity

#: The page's account actions, as its message names them done.
DONE = {"suspend": "suspended", "unsuspend": "unsuspended", "delete": "deleted"}


def provide_operator(ctx: Deps, identity: NamedDependency[Identity | None]) -> Identity:
    """The operator, signed in or with an ``admin`` key; 404 for anyone else (anonymous,
    and an operator's ordinary keys, included)."""
    if identity is None or not identity.user.operator:
        raise NotFound("Not found.")
    if identity.key is not None:
        if identity.key.scope != auth.ADMIN_SCOPE:
            raise NotFound("Not found.")
        return identity
    # A session: the usual checks of a signed-in request (CSRF on unsafe /api calls).
    return provide_me(ctx, identity)


OPERATOR = {"operator": Provide(provide_operator, sync_to_thread=False)}


def _act(ctx: Ctx, operator: Identity, account_id: str, action: str, data):
    now = ctx.now()
    if action == "suspend":
        return overview.suspend(ctx.db, account_id, now, actor_id=operator.user.id)
    if action == "unsuspend":
        return overview.unsuspend(ctx.db, account_id)
    if action == "delete":
        if data.get("confirm") not in YES:
            raise InvalidInput('Deleting erases all its data: confirm it with {"confirm": true}.')
        return overview.delete(ctx.db, ctx.settings, account_id, now, "operator via admin page")
    raise NotFound("Not found.")


def _context(ctx: Ctx, operator: Identity | None = None) -> dict[str, Any]:
    """The page, the same for every operator."""
    return {
        "o": overview.overview(ctx.db, ctx.settings, ctx.now()),
        "settings": ctx.settings,
        **policy_context(ctx.db, ctx.settings, ctx.now()),
    }


class AdminApi(Controller):
    path = "/api/admin"
    tags = ["admin"]
    dependencies = OPERATOR

    @get("/overview", sync_to_thread=True)
    def status(self, operator: Member, ctx: Deps) -> dict[str, Any]:
        """Accounts, inference and GPU state, worker heartbeat, purges, disk use, recent
        server errors and policy versions (operators only)."""
        return overview.overview(ctx.db, ctx.settings, ctx.now())

    @get("/accounts", sync_to_thread=True)
    def accounts(self, operator: Member, ctx: Deps) -> list[dict[str, Any]]:
        """Every account with members, balance, storage and last activity."""
        return [asdict(row) for row in overview.account_rows(ctx.db)]

    @post("/accounts/{account_id:str}/{action:str}", status_code=200, sync_to_thread=True)
    def act(
        self,
        account_id: FromPath[str],
        action: FromPath[str],
        operator: Member,
        ctx: Deps,
        data: JSONBody[dict[str, Any] | None] = None,
    ) -> dict[str, Any]:
        """``suspend`` (sessions end, keys refused), ``unsuspend``, or ``delete``
        (``{"confirm": true}``: locked now, erased by the privacy purge)."""
        result = _act(ctx, operator, account_id, action, data or {})
        return result if isinstance(result, dict) else asdict(result)


class AdminPages(Controller):
    include_in_schema = False
    dependencies = OPERATOR

    @get("/admin", sync_to_thread=True)
    def page(self, operator: Member, ctx: Deps) -> Template:
        return Template("admin.html", context=_context(ctx))

    @post("/admin/accounts/{account_id:str}/{action:str}", sync_to_thread=True)
    def act_form(
        self,
        account_id: FromPath[str],
        action: FromPath[str],
        data: Form,
        operator: Member,
        ctx: Deps,
    ) -> Response:
        try:
            _act(ctx, operator, account_id, action, data)
        except ApplianceError as exc:
            if isinstance(exc, NotFound) and action not in DONE:
                raise  # an unknown action: the page's 404, not the form's error
            return form_error("admin.html", _context(ctx), exc)
        return ctx.redirect("/admin", f"Account {DONE[action]}.")


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
    @rerenders("admin.html", _context)
    def operator_form(self, data: Form, operator: Member, ctx: Deps) -> Response:
        """Set who runs the appliance and the privacy contact (shown once published)."""
        name, contact = data.get("operator_name", ""), data.get("contact", "")
        policy.set_operator(ctx.db, name, contact, ctx.now())
        return ctx.redirect("/admin#policy", "Operator and privacy contact saved.")

    @post("/publish", sync_to_thread=True)
    @rerenders("admin.html", _context, InvalidInput, Conflict)
    def publish_form(self, data: Form, operator: Member, ctx: Deps) -> Response:
        """Publish the text as the configuration gives it now; every user is emailed."""
        effective_at = _effective(data.get("effective", ""))
        summary = data.get("summary", "")
        version = policy.publish(
            ctx.db, ctx.settings, ctx.now(), effective_at=effective_at, summary=summary
        )
        policy.announce(ctx.db, version, ctx.queue.send_mail)
        message = f"Policy version {version.version} published; every user is emailed."
        return ctx.redirect("/admin#policy", message)
