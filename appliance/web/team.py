"""Members, invites, API keys and the onboarding profile: JSON API and Settings pages."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import sqlite_utils
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, URLEncodedBody
from litestar.response import Redirect, Template

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput
from appliance.instances import onboarding
from appliance.instances import service as instances
from appliance.tasks import TaskQueue
from appliance.web import flash
from appliance.web.errors import form_error
from appliance.web.identity import Identity


def _parse_expiry(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidInput("'expires_at' must be an ISO 8601 date or date-time.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("'expires_at' must be an ISO 8601 date or date-time.") from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment


def _key_json(key: auth.ApiKey) -> dict:
    data = asdict(key)
    data.pop("revoked_at", None)
    return data


def _invite_mail(queue: TaskQueue, settings: Settings, me: Identity, invite) -> None:
    queue.send_mail(
        "invite",
        invite.email,
        {
            "account_name": me.account.name,
            "inviter_email": me.user.email,
            "link": f"{settings.public_url}/invites",
        },
    )


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
    def get_team(self, me: NamedDependency[Identity]) -> dict:
        """The current team: id, name, status, and your role in it."""
        return {**asdict(me.account), "role": me.role}

    @patch("/team", sync_to_thread=True)
    def rename_team(
        self,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """Rename the team (``{"name": ...}``, owners only: 403 for anyone else)."""
        account = accounts.rename_account(db, me.account.id, me.role, data.get("name", ""))
        return {**asdict(account), "role": me.role}

    @get("/members", sync_to_thread=True)
    def list_members(
        self, me: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """Members of the current account."""
        return [asdict(m) for m in accounts.members(db, me.account.id)]

    @patch("/members/{user_id:str}", sync_to_thread=True)
    def change_role(
        self,
        user_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """Change a member's role (owners and admins; only owners touch owners)."""
        member = accounts.set_role(
            db, manager.account.id, manager.role, user_id, str(data.get("role", ""))
        )
        return asdict(member)

    @delete("/members/{user_id:str}", status_code=204, sync_to_thread=True)
    def delete_member(
        self,
        user_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> None:
        """Remove a member (or leave). Their sessions and keys in this account stop at once."""
        remove_member(db, me, user_id, clock())

    @get("/invites", sync_to_thread=True)
    def list_invites(
        self, manager: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """Open invites of the current account."""
        return [asdict(i) for i in accounts.invites(db, manager.account.id)]

    @post("/invites", status_code=201, sync_to_thread=True)
    def create_invite(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Invite someone by email; the mail carries a link to sign in."""
        invite = accounts.invite(
            db,
            manager.account.id,
            manager.role,
            manager.user.id,
            str(data.get("email", "")),
            str(data.get("role", "member")),
            clock(),
        )
        _invite_mail(queue, settings, manager, invite)
        return asdict(invite)

    @delete("/invites/{invite_id:str}", status_code=204, sync_to_thread=True)
    def delete_invite(
        self,
        invite_id: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> None:
        """Withdraw an invite."""
        accounts.revoke_invite(db, manager.account.id, manager.role, invite_id, clock())

    @get("/keys", sync_to_thread=True)
    def list_keys(
        self, me: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """API keys (metadata only: the secret is shown once, at creation)."""
        return [_key_json(k) for k in visible_keys(db, me)]

    @post("/keys", status_code=201, sync_to_thread=True)
    def create_api_key(
        self,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Create a key. The response is the only time the secret is shown."""
        key, secret = create_key(db, me, data, clock())
        return {**_key_json(key), "key": secret}

    @delete("/keys/{key_id:str}", status_code=204, sync_to_thread=True)
    def delete_key(
        self,
        key_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> None:
        """Revoke a key; it stops working at once."""
        revoke_key(db, me, key_id, clock())

    @get("/profile", sync_to_thread=True)
    def get_profile(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """The account's onboarding answers."""
        return asdict(accounts.profile(db, me.account.id, clock()))

    @put("/profile", sync_to_thread=True)
    def put_profile(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Save the onboarding answers (owners and admins); the team's first instance,
        ``assistant``, is created if it has none."""
        saved = onboarding.save(db, settings, manager.account.id, manager.role, data, clock())
        return asdict(saved)


class TeamPages(Controller):
    include_in_schema = False

    @get("/onboarding", sync_to_thread=True)
    def onboarding(
        self,
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Template:
        profile = accounts.profile(db, manager.account.id, clock())
        return Template("onboarding.html", context={"profile": profile, "me": manager})

    @post("/onboarding", sync_to_thread=True)
    def onboarding_submit(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        if data.get("action") == "skip":
            onboarding.skip(db, settings, manager.account.id, manager.role, clock())
            message = "Onboarding skipped: you can fill in the team profile in Settings."
            return flash.redirect(request, "/", message)
        answers = {k: v for k, v in data.items() if k not in ("_csrf_token", "action", "next")}
        try:
            onboarding.save(db, settings, manager.account.id, manager.role, answers, clock())
        except InvalidInput as exc:
            profile = accounts.profile(db, manager.account.id, clock())
            return Template(
                "onboarding.html",
                context={
                    "profile": profile,
                    "me": manager,
                    "answers": answers,
                    "flashes": [("error", str(exc))],
                },
                status_code=400,
            )
        target = data.get("next") if data.get("next") == "/settings" else "/"
        return flash.redirect(request, target, "Team profile saved.")

    @get("/settings", sync_to_thread=True)
    def settings_page(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Template:
        return Template("settings.html", context=settings_context(db, me, clock()))

    @post("/settings/team", sync_to_thread=True)
    def rename_team_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            accounts.rename_account(db, me.account.id, me.role, data.get("name", ""))
        except InvalidInput as exc:
            return form_error("settings.html", settings_context(db, me, clock()), exc)
        return flash.redirect(request, "/settings#team", "Team renamed.")

    @post("/settings/keys", sync_to_thread=True)
    def create_key_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Create a key, then redirect: the secret is shown once by the next page, and a
        reload of that page creates nothing."""
        try:
            key, secret = create_key(db, me, data, clock())
        except InvalidInput as exc:
            return form_error("settings.html", settings_context(db, me, clock()), exc)
        return flash.redirect(
            request,
            "/settings#keys",
            f"API key “{key.name}” created.",
            new_key={"secret": secret, "scope": key.scope, "instance_id": key.instance_id},
        )

    @post("/settings/keys/{key_id:str}/revoke", sync_to_thread=True)
    def revoke_key_form(
        self,
        request: Request,
        key_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Redirect:
        revoke_key(db, me, key_id, clock())
        return flash.redirect(request, "/settings#keys", "API key revoked: it no longer works.")

    @post("/settings/invites", sync_to_thread=True)
    def invite_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            invite = accounts.invite(
                db,
                manager.account.id,
                manager.role,
                manager.user.id,
                data.get("email", ""),
                data.get("role", "member"),
                clock(),
            )
        except (InvalidInput, accounts.Conflict) as exc:
            return form_error("settings.html", settings_context(db, manager, clock()), exc)
        _invite_mail(queue, settings, manager, invite)
        return flash.redirect(
            request, "/settings#members", f"Invite sent to {invite.email} ({invite.role})."
        )

    @post("/settings/invites/{invite_id:str}/revoke", sync_to_thread=True)
    def revoke_invite_form(
        self,
        request: Request,
        invite_id: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Redirect:
        accounts.revoke_invite(db, manager.account.id, manager.role, invite_id, clock())
        return flash.redirect(request, "/settings#members", "Invite withdrawn.")

    @post("/settings/members/{user_id:str}/role", sync_to_thread=True)
    def role_form(
        self,
        request: Request,
        user_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            accounts.set_role(db, manager.account.id, manager.role, user_id, data.get("role", ""))
        except (InvalidInput, accounts.Conflict) as exc:
            return form_error("settings.html", settings_context(db, manager, clock()), exc)
        return flash.redirect(request, "/settings#members", "Role changed.")

    @post("/settings/members/{user_id:str}/remove", sync_to_thread=True)
    def remove_form(
        self,
        request: Request,
        user_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            remove_member(db, me, user_id, clock())
        except (InvalidInput, accounts.Conflict) as exc:
            return form_error("settings.html", settings_context(db, me, clock()), exc)
        if user_id == me.user.id:
            return flash.redirect(request, "/", f"You left {me.account.name}.")
        return flash.redirect(request, "/settings#members", "Member removed.")


def settings_context(db, me: Identity, now: datetime) -> dict:
    return {
        "me": me,
        "profile": accounts.profile(db, me.account.id, now),
        "members": accounts.members(db, me.account.id),
        "invites": accounts.invites(db, me.account.id) if me.is_manager else [],
        "keys": visible_keys(db, me),
        "instances": instances.list_instances(db, me.account.id),
        "roles": ("member", "admin", "owner"),
    }
