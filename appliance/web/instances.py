"""Instances over HTTP: the JSON API and the Instances page."""

from __future__ import annotations

from typing import Any

import sqlite_utils
from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, URLEncodedBody
from litestar.response import Template

from appliance.auth import service as auth
from appliance.chat import service as chat
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import ApplianceError, InvalidInput, NotFound
from appliance.instances import service as instances
from appliance.knowledge import collections as kb_collections
from appliance.web import flash
from appliance.web.errors import form_error
from appliance.web.identity import Identity

ACTIONS = {"stop": "stopped", "start": "running", "destroy": "destroyed"}


def _change_state(db, me: Identity, instance_id: str, action: str, data: dict, now):
    if action not in ACTIONS:
        raise InvalidInput("Unknown action.")
    if action == "destroy" and data.get("confirm") not in (True, "true", "on", "yes"):
        raise InvalidInput('Destroying cannot be undone: confirm it with {"confirm": true}.')
    # Deleting its conversations (chat's) happens in the transaction that destroys it.
    delete = action == "destroy" and data.get("delete_conversations") in (True, "true", "on", "yes")
    return instances.set_state(
        db,
        me.account.id,
        me.role,
        instance_id,
        ACTIONS[action],
        now,
        also=(lambda: chat.delete_for_instance(db, me.account.id, instance_id)) if delete else None,
    )


class InstancesApi(Controller):
    path = "/api/instances"
    tags = ["instances"]

    @get("/", sync_to_thread=True)
    def list_all(
        self, me: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """The account's instances (destroyed ones are not listed)."""
        return [i.public() for i in instances.list_instances(db, me.account.id)]

    @post("/", status_code=201, sync_to_thread=True)
    def create(
        self,
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Create an instance: ``{"name", "model"?, "temperature"?, "top_p"?, "max_tokens"?,
        "context_budget"?, "system_prompt"?, "voice"?, "knowledge"?, "top_k"?,
        "collections"?}`` (``collections``: the knowledge collection ids it searches; null
        or absent: every document)."""
        created = instances.create(
            db, manager.account.id, manager.role, data, now=clock(), **instances.limits(settings)
        )
        return created.public()

    @get("/{instance_id:str}", sync_to_thread=True)
    def read(
        self,
        instance_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """One instance."""
        found = instances.get(db, me.account.id, instance_id)
        if found.state == "destroyed":
            raise NotFound("No such instance.")
        return found.public()

    @patch("/{instance_id:str}", sync_to_thread=True)
    def change(
        self,
        instance_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Change settings (owners and admins)."""
        return instances.update(
            db,
            manager.account.id,
            manager.role,
            instance_id,
            data,
            now=clock(),
            **instances.limits(settings),
        ).public()

    @post("/{instance_id:str}/{action:str}", status_code=200, sync_to_thread=True)
    def act(
        self,
        instance_id: FromPath[str],
        action: FromPath[str],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
        data: JSONBody[dict[str, Any] | None] = None,
    ) -> dict:
        """``stop`` (requests get 409), ``start``, or ``destroy`` (``{"confirm": true}``:
        revokes the instance's keys at once and cannot be undone; with
        ``"delete_conversations": true`` its conversations are deleted too)."""
        return _change_state(db, manager, instance_id, action, data or {}, clock()).public()


class InstancesPages(Controller):
    include_in_schema = False

    @get("/instances", sync_to_thread=True)
    def page(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
    ) -> Template:
        return Template("instances.html", context=_context(db, me, settings))

    @post("/instances", sync_to_thread=True)
    def create_form(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            instances.create(
                db,
                manager.account.id,
                manager.role,
                {"name": data.get("name", "")},
                now=clock(),
                **instances.limits(settings),
            )
        except ApplianceError as exc:
            return form_error("instances.html", _context(db, manager, settings), exc)
        return flash.redirect(request, "/instances", "Instance created.")

    @post("/instances/{instance_id:str}/settings", sync_to_thread=True)
    def settings_form(
        self,
        request: Request,
        instance_id: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            changes = _form_changes(data)
            instances.update(
                db,
                manager.account.id,
                manager.role,
                instance_id,
                changes,
                now=clock(),
                **instances.limits(settings),
            )
        except InvalidInput as exc:
            return form_error("instances.html", _context(db, manager, settings), exc)
        return flash.redirect(request, f"/instances#{instance_id}", "Instance settings saved.")

    @post("/instances/{instance_id:str}/{action:str}", sync_to_thread=True)
    def act_form(
        self,
        request: Request,
        instance_id: FromPath[str],
        action: FromPath[str],
        data: URLEncodedBody[dict[str, str]],
        manager: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        try:
            _change_state(db, manager, instance_id, action, data, clock())
        except InvalidInput as exc:
            return form_error("instances.html", _context(db, manager, settings), exc)
        return flash.redirect(request, "/instances", f"Instance {ACTIONS[action]}.")


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


def _context(db, me: Identity, settings: Settings) -> dict[str, Any]:
    keys = auth.list_keys(db, me.account.id, None if me.is_manager else me.user.id)
    return {
        "me": me,
        "instances": instances.list_instances(db, me.account.id),
        "collections": kb_collections.collections(db, me.account.id),
        "keys": keys,
        "endpoint": f"{settings.public_url}/v1",
        **instances.limits(settings),
    }
