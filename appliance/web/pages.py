"""The home page and the first-run setup page."""

from __future__ import annotations

import sqlite_utils
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Redirect, Response, Template

from appliance import firstrun
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import service as chat
from appliance.clock import utcnow
from appliance.errors import InvalidInput
from appliance.knowledge import service as knowledge
from appliance.privacy import policy
from appliance.web.deps import Deps, Form
from appliance.web.errors import form_error
from appliance.web.identity import Identity
from appliance.web.signin import set_session_cookie


def next_steps(db: sqlite_utils.Database, identity: Identity, members: int, keys: int) -> list:
    """The dashboard's first steps, each with whether it is done: (label, link, done)."""
    account_id = identity.account.id
    asked = bool(chat.list_for_user(db, account_id, identity.user.id, limit=1))
    steps = [
        ("Upload documents", "/knowledge", bool(knowledge.documents(db, account_id))),
        ("Ask a question", "/chat", asked),
    ]
    if identity.is_manager:
        invited = members > 1 or bool(accounts.invites(db, account_id))
        steps.append(("Invite someone", "/settings#members", invited))
    steps.append(("Create an API key", "/settings#keys", keys > 0))
    return steps


class PagesController(Controller):
    include_in_schema = False

    @get("/", sync_to_thread=True)
    def home(self, ctx: Deps, identity: NamedDependency[Identity | None]) -> Template | Redirect:
        """The dashboard when signed in; else how to finish setup or sign in (or, signed
        in with only open invites, those)."""
        if identity is None and getattr(ctx.request.state, "waiting", None) is not None:
            return Redirect("/invites")
        db = ctx.db
        if identity is None:
            return Template("home.html", context={"claimed": firstrun.is_claimed(db)})
        account_id = identity.account.id
        pending = identity.is_manager and accounts.profile(db, account_id, ctx.now()).pending
        members = len(accounts.members(db, account_id))
        keys = len(auth.list_keys(db, account_id))
        return Template(
            "dashboard.html",
            context={
                "me": identity,
                "onboarding_pending": pending,
                "member_count": members,
                "key_count": keys,
                "endpoint": f"{ctx.settings.public_url}/v1",
                "steps": next_steps(db, identity, members, keys),
            },
        )

    @get("/setup", sync_to_thread=True)
    def setup_form(self, ctx: Deps, token: FromQuery[str] = "") -> Template:
        """The one-time setup page; 404 unless the token is the current setup token."""
        firstrun.check_token(ctx.settings, ctx.db, token)
        return Template("setup.html", context={"token": token, "data": {}, "flashes": []})

    @post("/setup", sync_to_thread=True)
    def setup_submit(self, data: Form, ctx: Deps) -> Response:
        """Record the first operator's email, and who runs the appliance (for the privacy
        policy; optional here, editable on /admin), and sign them in: whoever holds the
        setup link is the operator, so no emailed code is needed this once."""
        db, settings, token = ctx.db, ctx.settings, data.get("token", "")
        email = data.get("email", "")
        name = data.get("operator_name", "").strip()
        try:
            if name:
                operator = policy.check_operator(name, data.get("contact") or email)
            claimed = firstrun.claim(settings, db, token, email)
            if name:
                policy.set_operator(db, *operator, utcnow())
        except InvalidInput as exc:
            return form_error("setup.html", {"token": token, "data": data}, exc)
        user = accounts.user_by_email(db, claimed)
        (account, _), *_ = accounts.accounts_of(db, user.id)
        session = auth.create_session(db, settings, user.id, account.id, ctx.now())
        landing = "/onboarding"
        if policy.pending(db, user.id, ctx.now()) is not None:
            landing = "/privacy/accept?next=/onboarding"
        response = ctx.redirect(
            landing,
            f"This appliance is yours: {claimed} is its operator and the owner of a new team.",
        )
        set_session_cookie(response, settings, session)
        return response
