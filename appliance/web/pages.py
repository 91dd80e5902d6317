"""The home page and the first-run setup page."""

from __future__ import annotations

import sqlite_utils
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from appliance import firstrun
from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.clock import Clock, utcnow
from appliance.config import Settings
from appliance.errors import InvalidInput
from appliance.privacy import policy
from appliance.web.identity import Identity


class PagesController(Controller):
    include_in_schema = False

    @get("/", sync_to_thread=True)
    def home(
        self,
        request: Request,
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        identity: NamedDependency[Identity | None],
        clock: NamedDependency[Clock],
    ) -> Template | Redirect:
        """The dashboard when signed in; else how to finish setup or sign in (or, signed
        in with only open invites, those)."""
        if identity is None and getattr(request.state, "waiting", None) is not None:
            return Redirect("/invites")
        if identity is None:
            return Template("home.html", context={"claimed": firstrun.is_claimed(db)})
        account_id = identity.account.id
        pending = identity.is_manager and accounts.profile(db, account_id, clock()).pending
        return Template(
            "dashboard.html",
            context={
                "me": identity,
                "onboarding_pending": pending,
                "member_count": len(accounts.members(db, account_id)),
                "key_count": len(auth.list_keys(db, account_id)),
                "endpoint": f"{settings.public_url}/v1",
            },
        )

    @get("/setup", sync_to_thread=True)
    def setup_form(
        self,
        settings: NamedDependency[Settings],
        db: NamedDependency[sqlite_utils.Database],
        token: FromQuery[str] = "",
    ) -> Template:
        """The one-time setup page; 404 unless the token is the current setup token."""
        firstrun.check_token(settings, db, token)
        return Template("setup.html", context={"token": token, "data": {}, "flashes": []})

    @post("/setup", sync_to_thread=True, status_code=200)
    def setup_submit(
        self,
        settings: NamedDependency[Settings],
        db: NamedDependency[sqlite_utils.Database],
        data: URLEncodedBody[dict[str, str]],
    ) -> Template:
        """Record the first operator's email, and who runs the appliance (for the privacy
        policy; optional here, editable on /admin)."""
        token = data.get("token", "")
        email = data.get("email", "")
        name = data.get("operator_name", "").strip()
        try:
            if name:
                operator = policy.check_operator(name, data.get("contact") or email)
            claimed = firstrun.claim(settings, db, token, email)
            if name:
                policy.set_operator(db, *operator, utcnow())
        except InvalidInput as exc:
            flashes = [("error", str(exc))]
            return Template(
                "setup.html",
                context={"token": token, "data": data, "flashes": flashes},
                status_code=400,
            )
        return Template("setup_done.html", context={"email": claimed})
