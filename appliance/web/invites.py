"""The invited person's side of invites: see them, accept or decline (API and /invites).

Signing in never accepts an invite. Someone invited sees their open invites after
sign-in (the invite mail links to /invites) and answers each; accepting moves the
session into that account. A session that is in no account yet reaches only these
routes (``person``: web/identity.py).
"""

from __future__ import annotations

from dataclasses import asdict

from litestar import Controller, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from appliance.accounts import service as accounts
from appliance.accounts.models import Account
from appliance.auth import service as auth
from appliance.web.deps import Ctx, Deps, SignedIn
from appliance.web.identity import Person


def _accept(ctx: Ctx, person: Person, invite_id: str) -> Account:
    joined = accounts.accept_invite(ctx.db, person.user.id, invite_id, ctx.now())
    auth.switch_account(ctx.db, person.session, joined.id)  # work in the account just joined
    return joined


class InvitesApi(Controller):
    path = "/api/me/invites"
    tags = ["auth"]

    @get("/", sync_to_thread=True)
    def list_invites(self, person: SignedIn, ctx: Deps) -> list[dict]:
        """The signed-in person's open invites (accept or decline each)."""
        return [asdict(offer) for offer in accounts.invited(ctx.db, person.user, ctx.now())]

    @post("/{invite_id:str}/accept", status_code=200, sync_to_thread=True)
    def accept(self, invite_id: FromPath[str], person: SignedIn, ctx: Deps) -> dict:
        """Join the inviting account; the session moves into it. 404 if not yours/open."""
        joined = _accept(ctx, person, invite_id)
        role = accounts.role_in(ctx.db, joined.id, person.user.id)
        return {"account": {"id": joined.id, "name": joined.name, "role": role}}

    @post("/{invite_id:str}/decline", status_code=204, sync_to_thread=True)
    def decline(self, invite_id: FromPath[str], person: SignedIn, ctx: Deps) -> None:
        """Say no: the invite closes and the inviting account no longer lists it."""
        accounts.decline_invite(ctx.db, person.user.id, invite_id, ctx.now())


class InvitesPages(Controller):
    include_in_schema = False

    @get("/invites", sync_to_thread=True)
    def invites_page(self, person: SignedIn, ctx: Deps) -> Template:
        return Template(
            "invites.html",
            context={
                "person": person,
                "offers": accounts.invited(ctx.db, person.user, ctx.now()),
                "member": bool(accounts.accounts_of(ctx.db, person.user.id)),
            },
        )

    @post("/invites/{invite_id:str}/accept", sync_to_thread=True)
    def accept_form(self, invite_id: FromPath[str], person: SignedIn, ctx: Deps) -> Response:
        joined = _accept(ctx, person, invite_id)
        return ctx.redirect("/", f"You joined {joined.name}.")

    @post("/invites/{invite_id:str}/decline", sync_to_thread=True)
    def decline_form(self, invite_id: FromPath[str], person: SignedIn, ctx: Deps) -> Response:
        accounts.decline_invite(ctx.db, person.user.id, invite_id, ctx.now())
        return ctx.redirect("/invites", "Invite declined.")
