"""Members, invites, API keys and the onboarding profile: JSON API and Settings pages."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Response, delete, get, patch, post, put
from litestar.params import FromPath
from litestar.response import Redirect, Template

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput
from appliance.instances import onboarding
from appliance.instances import service as instances
from appliance.web.deps import Ctx, Deps, Form, Json, Member
from appliance.web.errors import form_error, rerenders
from appliance.web.identity import Identity


def _parse_expiry(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):  # TypeError: not a string
        raise InvalidInput("'expires_at' must be an ISO 8601 date or date-time.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _key_json(key: auth.ApiKey) -> dict:
    return {k: v for k, v in asdict(key).items() if k != "revoked_at"}


def invite(ctx: Ctx, manager: Identity, email: str, role: str):
    """Invite ``email`` to the manager's account and mail them the link."""
    account = manager.account.id
    sent = accounts.invite(ctx.db, account, manager.role, manager.user.id, email, role, ctx.now())
    link = f"{ctx.settings.public_url}/invites"
    mail = {"account_name": manager.account.name, "inviter_email": manager.user.email, "link": link}
    ctx.queue.send_mail("invite", sent.email, mail)
    return sent


def remove_member(db, me: Identity, user_id: str, now: datetime) -> None:
    with write_transaction(db):
        accounts.remove_member(db, me.account.id, me.role, me.user.id, user_id)
        auth.revoke_member_access(db, me.account.id, user_id, now)


def create_key(db, me: Identity, data: dict, now: datetime) -> tuple[auth.ApiKey, str]:
    scope = data.get("scope", "inference")
    if scope == "manage" and not me.is_manager:
        raise InvalidInput("Only owners and admins can create keys with scope 'manage'.")
    instance_id = data.get("instance_id") or None
    if instance_id is not None:
        if not isinstance(instance_id, str):
            raise InvalidInput("'instance_id' must be a string.")
        instances.get(db, me.account.id, instance_id)  # 404 for another account's instance
    return auth.create_key(
        db,
        user_id=me.user.id,
        account_id=me.account.id,
        name=str(data.get("name", "")),
        scope=str(scope),
        now=now,
        instance_id=instance_id,
        expires_at=_parse_expiry(data.get("expires_at")),
    )


def visible_keys(db, me: Identity) -> list[auth.ApiKey]:
    """Owners and admins see every key of the account; members see their own."""
    return auth.list_keys(db, me.account.id, None if me.is_manager else me.user.id)


def revoke_key(db, me: Identity, key_id: str, now: datetime) -> None:
    key = auth.get_key(db, me.account.id, key_id)
    if not me.is_manager and key.user_id != me.user.id:
        raise accounts.Forbidden("No such key.")
    auth.revoke_key(db, me.account.id, key_id, now)


class TeamApi(Controller):
    path = "/api"
    tags = ["team"]

    @get("/team", sync_to_thread=True)
    def get_team(self, me: Member) -> dict:
        """The current team: id, name, status, and your role in it."""
        return {**asdict(me.account), "role": me.role}

    @patch("/team", sync_to_thread=True)
    def rename_team(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Rename the team (``{"name": ...}``, owners only: 403 for anyone else)."""
        account = accounts.rename_account(ctx.db, me.account.id, me.role, data.get("name", ""))
        return {**asdict(account), "role": me.role}

    @get("/members", sync_to_thread=True)
    def list_members(self, me: Member, ctx: Deps) -> list[dict]:
        """Members of the current account."""
        return [asdict(m) for m in accounts.members(ctx.db, me.account.id)]

    @patch("/members/{user_id:str}", sync_to_thread=True)
    def change_role(self, user_id: FromPath[str], data: Json, manager: Member, ctx: Deps) -> dict:
        """Change a member's role (owners and admins; only owners touch owners)."""
        role = str(data.get("role", ""))
        return asdict(accounts.set_role(ctx.db, manager.account.id, manager.role, user_id, role))

    @delete("/members/{user_id:str}", status_code=204, sync_to_thread=True)
    def delete_member(self, user_id: FromPath[str], me: Member, ctx: Deps) -> None:
        """Remove a member (or leave). Their sessions and keys in this account stop at once."""
        remove_member(ctx.db, me, user_id, ctx.now())

    @get("/invites", sync_to_thread=True)
    def list_invites(self, manager: Member, ctx: Deps) -> list[dict]:
        """Open invites of the current account."""
        return [asdict(i) for i in accounts.invites(ctx.db, manager.account.id)]

    @post("/invites", status_code=201, sync_to_thread=True)
    def create_invite(self, data: Json, manager: Member, ctx: Deps) -> dict:
        """Invite someone by email; the mail carries a link to sign in."""
        email, role = str(data.get("email", "")), str(data.get("role", "member"))
        return asdict(invite(ctx, manager, email, role))

    @delete("/invites/{invite_id:str}", status_code=204, sync_to_thread=True)
    def delete_invite(self, invite_id: FromPath[str], manager: Member, ctx: Deps) -> None:
        """Withdraw an invite."""
        accounts.revoke_invite(ctx.db, manager.account.id, manager.role, invite_id, ctx.now())

    @get("/keys", sync_to_thread=True)
    def list_keys(self, me: Member, ctx: Deps) -> list[dict]:
        """API keys (metadata only: the secret is shown once, at creation)."""
        return [_key_json(k) for k in visible_keys(ctx.db, me)]

    @post("/keys", status_code=201, sync_to_thread=True)
    def create_api_key(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Create a key. The response is the only time the secret is shown."""
        key, secret = create_key(ctx.db, me, data, ctx.now())
        return {**_key_json(key), "key": secret}

    @delete("/keys/{key_id:str}", status_code=204, sync_to_thread=True)
    def delete_key(self, key_id: FromPath[str], me: Member, ctx: Deps) -> None:
        """Revoke a key; it stops working at once."""
        revoke_key(ctx.db, me, key_id, ctx.now())

    @get("/profile", sync_to_thread=True)
    def get_profile(self, me: Member, ctx: Deps) -> dict:
        """The account's onboarding answers."""
        return asdict(accounts.profile(ctx.db, me.account.id, ctx.now()))

    @put("/profile", sync_to_thread=True)
    def put_profile(self, data: Json, manager: Member, ctx: Deps) -> dict:
        """Save the onboarding answers (owners and admins); the team's first instance,
        ``assistant``, is created if it has none."""
        account, role = manager.account.id, manager.role
        return asdict(onboarding.save(ctx.db, ctx.settings, account, role, data, ctx.now()))


def settings_context(ctx: Ctx, me: Identity) -> dict:
    db = ctx.db
    return {
        "me": me,
        "profile": accounts.profile(db, me.account.id, ctx.now()),
        "members": accounts.members(db, me.account.id),
        "invites": accounts.invites(db, me.account.id) if me.is_manager else [],
        "keys": visible_keys(db, me),
        "instances": instances.list_instances(db, me.account.id),
        "roles": ("member", "admin", "owner"),
    }


class TeamPages(Controller):
    include_in_schema = False

    @get("/onboarding", sync_to_thread=True)
    def onboarding(self, manager: Member, ctx: Deps) -> Template:
        return Template("onboarding.html", context=_onboarding_context(ctx, manager))

    @post("/onboarding", sync_to_thread=True)
    def onboarding_submit(self, data: Form, manager: Member, ctx: Deps) -> Response:
        account, role = manager.account.id, manager.role
        if data.get("action") == "skip":
            onboarding.skip(ctx.db, ctx.settings, account, role, ctx.now())
            message = "Onboarding skipped: you can fill in the team profile in Settings."
            return ctx.redirect("/", message)
        answers = {k: v for k, v in data.items() if k not in ("_csrf_token", "action", "next")}
        try:
            onboarding.save(ctx.db, ctx.settings, account, role, answers, ctx.now())
        except InvalidInput as exc:
            context = {**_onboarding_context(ctx, manager), "answers": answers}
            return form_error("onboarding.html", context, exc)
        target = data.get("next") if data.get("next") == "/settings" else "/"
        return ctx.redirect(target, "Team profile saved.")

    @get("/settings", sync_to_thread=True)
    def settings_page(self, me: Member, ctx: Deps) -> Template:
        return Template("settings.html", context=settings_context(ctx, me))

    @post("/settings/team", sync_to_thread=True)
    @rerenders("settings.html", settings_context)
    def rename_team_form(self, data: Form, me: Member, ctx: Deps) -> Response:
        accounts.rename_account(ctx.db, me.account.id, me.role, data.get("name", ""))
        return ctx.redirect("/settings#team", "Team renamed.")

    @post("/settings/keys", sync_to_thread=True)
    @rerenders("settings.html", settings_context)
    def create_key_form(self, data: Form, me: Member, ctx: Deps) -> Response:
        """Create a key, then redirect: the secret is shown once by the next page, and a
        reload of that page creates nothing."""
        key, secret = create_key(ctx.db, me, data, ctx.now())
        new_key = {"secret": secret, "scope": key.scope, "instance_id": key.instance_id}
        return ctx.redirect("/settings#keys", f"API key “{key.name}” created.", new_key=new_key)

    @post("/settings/keys/{key_id:str}/revoke", sync_to_thread=True)
    def revoke_key_form(self, key_id: FromPath[str], me: Member, ctx: Deps) -> Redirect:
        revoke_key(ctx.db, me, key_id, ctx.now())
        return ctx.redirect("/settings#keys", "API key revoked: it no longer works.")

    @post("/settings/invites", sync_to_thread=True)
    @rerenders("settings.html", settings_context, InvalidInput, Conflict)
    def invite_form(self, data: Form, manager: Member, ctx: Deps) -> Response:
        sent = invite(ctx, manager, data.get("email", ""), data.get("role", "member"))
        return ctx.redirect("/settings#members", f"Invite sent to {sent.email} ({sent.role}).")

    @post("/settings/invites/{invite_id:str}/revoke", sync_to_thread=True)
    def revoke_invite_form(self, invite_id: FromPath[str], manager: Member, ctx: Deps) -> Redirect:
        accounts.revoke_invite(ctx.db, manager.account.id, manager.role, invite_id, ctx.now())
        return ctx.redirect("/settings#members", "Invite withdrawn.")

    @post("/settings/members/{user_id:str}/role", sync_to_thread=True)
    @rerenders("settings.html", settings_context, InvalidInput, Conflict)
    def role_form(self, user_id: FromPath[str], data: Form, manager: Member, ctx: Deps) -> Response:
        account, role = manager.account.id, manager.role
        accounts.set_role(ctx.db, account, role, user_id, data.get("role", ""))
        return ctx.redirect("/settings#members", "Role changed.")

    @post("/settings/members/{user_id:str}/remove", sync_to_thread=True)
    @rerenders("settings.html", settings_context, InvalidInput, Conflict)
    def remove_form(self, user_id: FromPath[str], me: Member, ctx: Deps) -> Response:
        remove_member(ctx.db, me, user_id, ctx.now())
        if user_id == me.user.id:
            return ctx.redirect("/", f"You left {me.account.name}.")
        return ctx.redirect("/settings#members", "Member removed.")


def _onboarding_context(ctx: Ctx, manager: Identity) -> dict:
    return {"profile": accounts.profile(ctx.db, manager.account.id, ctx.now()), "me": manager}
