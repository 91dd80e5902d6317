"""Instances over HTTP: the JSON API and the Instances page."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, patch, post
from litestar.params import FromPath, JSONBody
from litestar.response import Template

from appliance.chat import service as chat
from appliance.errors import ApplianceError, InvalidInput, NotFound
from appliance.instances import service as instances
from appliance.knowledge import collections as kb_collections
from appliance.web.deps import YES, Ctx, Deps, Form, Json, Member
from appliance.web.errors import rerenders
from appliance.web.identity import Identity
from appliance.web.team import visible_keys

ACTIONS = {"stop": "stopped", "start": "running", "destroy": "destroyed"}


def _change_state(ctx: Ctx, me: Identity, instance_id: str, action: str, data: dict):
    if action not in ACTIONS:
        raise InvalidInput("Unknown action.")
    if action == "destroy" and data.get("confirm") not in YES:
        raise InvalidInput('Destroying cannot be undone: confirm it with {"confirm": true}.')
    # Deleting its conversations (chat's) happens in the transaction that destroys it.
    delete = action == "destroy" and data.get("delete_conversations") in YES
    db, account = ctx.db, me.account.id
    also = (lambda: chat.delete_for_instance(db, account, instance_id)) if delete else None
    return instances.set_state(
        db, account, me.role, instance_id, ACTIONS[action], ctx.now(), also=also
    )


class InstancesApi(Controller):
    path = "/api/instances"
    tags = ["instances"]

    @get("/", sync_to_thread=True)
    def list_all(self, me: Member, ctx: Deps) -> list[dict]:
        """The account's instances (destroyed ones are not listed)."""
        return [i.public() for i in instances.list_instances(ctx.db, me.account.id)]

    @post("/", status_code=201, sync_to_thread=True)
    def create(self, data: Json, manager: Member, ctx: Deps) -> dict:
        """Create an instance: ``{"name", "model"?, "temperature"?, "top_p"?, "max_tokens"?,
        "context_budget"?, "system_prompt"?, "voice"?, "knowledge"?, "top_k"?,
        "collections"?}`` (``collections``: the knowledge collection ids it searches; null
        or absent: every document)."""
        return _create(ctx, manager, data).public()

    @get("/{instance_id:str}", sync_to_thread=True)
    def read(self, instance_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        """One instance."""
        found = instances.get(ctx.db, me.account.id, instance_id)
        if found.state == "destroyed":
            raise NotFound("No such instance.")
        return found.public()

    @patch("/{instance_id:str}", sync_to_thread=True)
    def change(self, instance_id: FromPath[str], data: Json, manager: Member, ctx: Deps) -> dict:
        """Change settings (owners and admins)."""
        return _update(ctx, manager, instance_id, data).public()

    @post("/{instance_id:str}/{action:str}", status_code=200, sync_to_thread=True)
    def act(
        self,
        instance_id: FromPath[str],
        action: FromPath[str],
        manager: Member,
        ctx: Deps,
        data: JSONBody[dict[str, Any] | None] = None,
    ) -> dict:
        """``stop`` (requests get 409), ``start``, or ``destroy`` (``{"confirm": true}``:
        revokes the instance's keys at once and cannot be undone; with
        ``"delete_conversations": true`` its conversations are deleted too)."""
        return _change_state(ctx, manager, instance_id, action, data or {}).public()


def _create(ctx: Ctx, manager: Identity, data: dict) -> instances.Instance:
    limits = instances.limits(ctx.settings)
    return instances.create(ctx.db, manager.account.id, manager.role, data, now=ctx.now(), **limits)


def _update(ctx: Ctx, manager: Identity, instance_id: str, changes: dict) -> instances.Instance:
    account, role, limits = manager.account.id, manager.role, instances.limits(ctx.settings)
    return instances.update(ctx.db, account, role, instance_id, changes, now=ctx.now(), **limits)


def _context(ctx: Ctx, me: Identity) -> dict[str, Any]:
    db, settings = ctx.db, ctx.settings
    return {
        "me": me,
        "instances": instances.list_instances(db, me.account.id),
        "collections": kb_collections.collections(db, me.account.id),
        "keys": visible_keys(db, me),
        "endpoint": f"{settings.public_url}/v1",
        **instances.limits(settings),
    }


class InstancesPages(Controller):
    include_in_schema = False

    @get("/instances", sync_to_thread=True)
    def page(self, me: Member, ctx: Deps) -> Template:
        return Template("instances.html", context=_context(ctx, me))

    @post("/instances", sync_to_thread=True)
    @rerenders("instances.html", _context, ApplianceError)
    def create_form(self, data: Form, manager: Member, ctx: Deps) -> Response:
        _create(ctx, manager, {"name": data.get("name", "")})
        return ctx.redirect("/instances", "Instance created.")

    @post("/instances/{instance_id:str}/settings", sync_to_thread=True)
    @rerenders("instances.html", _context)
    def settings_form(
        self, instance_id: FromPath[str], data: Form, manager: Member, ctx: Deps
    ) -> Response:
        _update(ctx, manager, instance_id, _form_changes(data))
        return ctx.redirect(f"/instances#{instance_id}", "Instance settings saved.")

    @post("/instances/{instance_id:str}/{action:str}", sync_to_thread=True)
    @rerenders("instances.html", _context)
    def act_form(
        self,
        instance_id: FromPath[str],
        action: FromPath[str],
        data: Form,
        manager: Member,
        ctx: Deps,
    ) -> Response:
        _change_state(ctx, manager, instance_id, action, data)
        return ctx.redirect("/instances", f"Instance {ACTIONS[action]}.")


def _form_changes(data: dict[str, str]) -> dict[str, Any]:
    """The settings form as a PATCH: numbers parsed, unchecked boxes are off, an empty
    prompt goes back to the team's; the collections searched are the ticked
    ``collection:<id>`` boxes, unless ``collections`` is ``all``."""

    def number(name: str, kind: type) -> int | float:
        try:
            return kind(data.get(name, ""))
        except ValueError:
            raise InvalidInput(f"'{name}' must be a number.") from None

    prompt = (data.get("system_prompt") or "").strip()
    return {
        "name": data.get("name", ""),
        "model": data.get("model", ""),
        "temperature": number("temperature", float),
        "top_p": number("top_p", float),
        "max_tokens": number("max_tokens", int),
        "context_budget": number("context_budget", int),
        "top_k": number("top_k", int),
        "knowledge": data.get("knowledge") == "on",
        "voice": data.get("voice") == "on",
        "system_prompt": prompt or None,
        "collections": None
        if data.get("collections", "all") == "all"
        else [key.removeprefix("collection:") for key in data if key.startswith("collection:")],
    }
