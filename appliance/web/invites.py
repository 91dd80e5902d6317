"""The invited person's side of invites: see them, accept or decline (API and /invites).

Signing in never accepts an invite. Someone invited sees their open invites after
sign-in (the invite mail links to /invites) and answers each; accepting moves the
session into that account. A session that is in no account yet reaches only these
routes (``person``: web/identity.py).
"""

from __future__ import annotations

from dataclasses import asdict

import sqlite_utils
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template

from appliance.accounts import service as accounts
from appliance.accounts.models import Account
from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.web import flash
from appliance.web.identity import Person


def _accept(db: sqlite_utils.Database, person: Person, invite_id: str, clock: Clock) -> Account:
    joined = accounts.accept_invite(db, person.user.id, invite_id, clock())
    auth.switch_account(db, person.session, joined.id)  # work in the account just joined
    return joined


class InvitesApi(Controller):
    path = "/api/me/invites"
    tags = ["auth"]

    @get("/", sync_to_thread=True)
    def list_invites(
        self,
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> list[dict]:
        """The signed-in person's open invites (accept or decline each)."""
        return [asdict(offer) for offer in accounts.invited(db, person.user, clock())]

    @post("/{invite_id:str}/accept", status_code=200, sync_to_thread=True)
    def accept(
        self,
        invite_id: FromPath[str],
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Join the inviting account; the session moves into it. 404 if not yours/open."""
        joined = _accept(db, person, invite_id, clock)
        role = accounts.role_in(db, joined.id, person.user.id)
        return {"account": {"id": joined.id, "name": joined.name, "role": role}}

    @post("/{invite_id:str}/decline", status_code=204, sync_to_thread=True)
    def decline(
        self,
        invite_id: FromPath[str],
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> None:
        """Say no: the invite closes and the inviting account no longer lists it."""
        accounts.decline_invite(db, person.user.id, invite_id, clock())


class InvitesPages(Controller):
    include_in_schema = False

    @get("/invites", sync_to_thread=True)
    def invites_page(
        self,
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Template:
        return Template(
            "invites.html",
            context={
                "person": person,
                "offers": accounts.invited(db, person.user, clock()),
                "member": bool(accounts.accounts_of(db, person.user.id)),
            },
        )

    @post("/invites/{invite_id:str}/accept", sync_to_thread=True)
    def accept_form(
        self,
        request: Request,
        invite_id: FromPath[str],
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        joined = _accept(db, person, invite_id, clock)
        return flash.redirect(request, "/", f"You joined {joined.name}.")

    @post("/invites/{invite_id:str}/decline", sync_to_thread=True)
    def decline_form(
        self,
        request: Request,
        invite_id: FromPath[str],
        person: NamedDependency[Person],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        accounts.decline_invite(db, person.user.id, invite_id, clock())
        return flash.redirect(request, "/invites", "Invite declined.")
