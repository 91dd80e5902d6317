"""Rules for instances: create, change, stop, start and destroy.

An instance is an account's private model endpoint. Its name is what API clients pass as
``model``; a destroyed instance is kept as a record (for billing history) but can never
serve again, and its keys are revoked in the same transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from appliance.accounts.models import MANAGERS
from appliance.auth import service as auth
from appliance.billing import meter
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.ids import new_id
from appliance.inference import models as model_registry
from appliance.knowledge import collections as kb_collections

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
STATES = ("running", "stopped", "destroyed")
MAX_PROMPT_CHARS = 8000


@dataclass(frozen=True)
class Instance:
    id: str
    account_id: str
    name: str
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    context_budget: int
    system_prompt: str | None
    voice: bool
    knowledge: bool
    top_k: int
    state: str
    created_at: str
    updated_at: str
    #: The knowledge collections it searches (ids); ``None``: every document.
    collections: list[str] | None = None

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("account_id")
        return data


#: Fields a PATCH may change, with their checks: (type, low, high).
EDITABLE = {
    "name": (str, None, None),
    "model": (str, None, None),
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.01, 1.0),
    "max_tokens": (int, 1, 1_048_576),
    "context_budget": (int, 256, 1_048_576),
    "system_prompt": (str, None, None),
    "voice": (bool, None, None),
    "knowledge": (bool, None, None),
    "top_k": (int, 1, 20),
    "collections": (list, None, None),
}


def _instance(row: dict) -> Instance:
    chosen = row.get("collections")
    flags = {"voice": bool(row["voice"]), "knowledge": bool(row["knowledge"])}
    collections = json.loads(chosen) if chosen is not None else None
    return Instance(**{**row, **flags, "collections": collections})


def _instances(db: Database, where: str, params: list) -> list[Instance]:
    # A query, not rows_where, which first reads the schema twice: /v1 finds its instance
    # here on every request. ``where`` is one of this module's clauses.
    rows = db.query(f"select * from instances where {where} order by created_at", params)  # noqa: S608
    return [_instance(row) for row in rows]


def _require_manager(role: str) -> None:
    if role not in MANAGERS:
        raise NotFound("Not found.")


def _validate(db, account_id: str, changes: dict, models: list[str], max_tokens_cap: int) -> dict:
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise InvalidInput(f"Unknown instance field: {unknown[0]}.")
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        kind, low, high = EDITABLE[key]
        if key in ("system_prompt", "collections") and value is None:
            clean[key] = None  # back to the persona prompt; every document
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInput(f"'{key}' has the wrong type.")
        if low is not None and not low <= value <= high:
            raise InvalidInput(f"'{key}' must be between {low} and {high}.")
        clean[key] = value
    if "name" in clean:
        clean["name"] = clean["name"].strip().lower()
        if not NAME_RE.match(clean["name"]):
            raise InvalidInput(
                "The name may use a-z, 0-9, '.', '_' and '-' (it is the API's model name)."
            )
    if "model" in clean and clean["model"] not in models:
        raise InvalidInput(f"Unknown model '{clean['model']}'; installed: {', '.join(models)}.")
    if "max_tokens" in clean and clean["max_tokens"] > max_tokens_cap:
        raise InvalidInput(f"'max_tokens' may be at most {max_tokens_cap}.")
    if clean.get("system_prompt") and len(clean["system_prompt"]) > MAX_PROMPT_CHARS:
        raise InvalidInput(f"The system prompt may be at most {MAX_PROMPT_CHARS} characters.")
    if clean.get("collections") is not None:  # the account's own only
        clean["collections"] = kb_collections.check(db, account_id, clean["collections"])
    return clean


def create(
    db: Database,
    account_id: str,
    actor_role: str,
    data: dict[str, Any],
    *,
    models: list[str],
    max_tokens_cap: int,
    now: datetime,
) -> Instance:
    """A new running instance; ``models`` are the chat models that may be chosen."""
    _require_manager(actor_role)
    if not models:
        raise InvalidInput("No chat model is installed.")
    defaults = {
        "name": data.get("name", ""),
        "model": models[0],
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": min(512, max_tokens_cap),
        "context_budget": 4096,
        "voice": True,
        "knowledge": True,
        "top_k": 5,
    }
    clean = _validate(db, account_id, {**defaults, **data}, models, max_tokens_cap)
    instance = Instance(
        id=new_id("ins"),
        account_id=account_id,
        system_prompt=clean.pop("system_prompt", None),
        state="running",
        created_at=iso(now),
        updated_at=iso(now),
        **clean,
    )
    with write_transaction(db):
        _check_name_free(db, account_id, instance.name, None)
        db["instances"].insert(asdict(instance))
    return instance


def chat_models(settings: Settings) -> list[str]:
    """Installed chat models, the default first."""
    registry = model_registry.load_registry(settings)
    ids = [m.id for m in registry.models.values() if m.kind == "chat"]
    return sorted(ids, key=lambda i: i != registry.default_chat)


def limits(settings: Settings) -> dict[str, Any]:
    """What ``create`` and ``update`` check against: the chat models that may be chosen
    and the largest ``max_tokens``."""
    return {"models": chat_models(settings), "max_tokens_cap": settings.inference.max_tokens}


_LIVE = "account_id = ? and name = ? and state != 'destroyed'"


def _check_name_free(db, account_id: str, name: str, except_id: str | None) -> None:
    if any(found.id != except_id for found in _instances(db, _LIVE, [account_id, name])):
        raise Conflict(f"An instance named '{name}' already exists.")


def get(db: Database, account_id: str, instance_id: str) -> Instance:
    found = _instances(db, "id = ? and account_id = ?", [instance_id, account_id])
    if not found:
        raise NotFound("No such instance.")
    return found[0]


def by_name(db: Database, account_id: str, name: str) -> Instance:
    found = _instances(db, _LIVE, [account_id, name])
    if not found:
        raise NotFound(f"The model '{name}' does not exist.")
    return found[0]


def running(db: Database) -> list[tuple[str, str, str]]:
    """``(id, account_id, created_at)`` of every running instance (for billing)."""
    return [(i.id, i.account_id, i.created_at) for i in _instances(db, "state = 'running'", [])]


def list_instances(db: Database, account_id: str) -> list[Instance]:
    return _instances(db, "account_id = ? and state != 'destroyed'", [account_id])


def update(
    db: Database,
    account_id: str,
    actor_role: str,
    instance_id: str,
    changes: dict[str, Any],
    *,
    models: list[str],
    max_tokens_cap: int,
    now: datetime,
) -> Instance:
    _require_manager(actor_role)
    clean = _validate(db, account_id, changes, models, max_tokens_cap)
    with write_transaction(db):
        current = get(db, account_id, instance_id)
        if current.state == "destroyed":
            raise NotFound("No such instance.")
        if "name" in clean:
            _check_name_free(db, account_id, clean["name"], instance_id)
        updated = replace(current, **clean, updated_at=iso(now))
        db["instances"].update(instance_id, {**clean, "updated_at": updated.updated_at})
    return updated


def set_state(
    db: Database,
    account_id: str,
    actor_role: str,
    instance_id: str,
    state: str,
    now: datetime,
    also: Callable[[], object] | None = None,
) -> Instance:
    """Stop, start or destroy. Destroying revokes the instance's keys in the same transaction
    and cannot be undone. ``also`` runs in that transaction too (the chat domain deleting
    the instance's conversations, say): if it fails, nothing changes."""
    _require_manager(actor_role)
    if state not in STATES:
        raise InvalidInput("Unknown state.")
    with write_transaction(db):
        current = get(db, account_id, instance_id)
        if current.state == "destroyed":
            raise NotFound("No such instance.")
        db["instances"].update(instance_id, {"state": state, "updated_at": iso(now)})
        # Stopping or destroying ends the instance's billing meter in this transaction.
        meter.instance_state_changed(
            db,
            instance_id=instance_id,
            account_id=account_id,
            created_at=current.created_at,
            old_state=current.state,
            new_state=state,
            now=now,
        )
        if state == "destroyed":
            auth.revoke_instance_keys(db, account_id, instance_id, now)
        if also is not None:
            also()
    return replace(current, state=state, updated_at=iso(now))
