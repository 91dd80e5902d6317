"""Rules for collections: named groups of an account's documents.

A document may be in any number of collections (or none). An instance searches the
collections chosen for it, or every document when none are chosen
(``instances.collections`` is null). Owners and admins create, rename and delete
collections; whoever may delete a document may also file it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlite_utils

from appliance.accounts.models import MANAGERS
from appliance.clock import iso
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotAllowed, NotFound
from appliance.ids import new_id
from appliance.knowledge import service
from appliance.knowledge.store import Collection, KnowledgeStore

MAX_NAME = 60
MAX_COLLECTIONS = 200


def _require_manager(actor_role: str) -> None:
    if actor_role not in MANAGERS:
        raise NotAllowed("Only owners and admins can create, rename or delete collections.")


def _free_name(db, account_id: str, actor_role: str, name: Any, collection_id: str = "") -> str:
    """``name`` cleaned, once the actor may name collections and no other has it."""
    _require_manager(actor_role)
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > MAX_NAME:
        raise InvalidInput(f"A collection's name must be 1 to {MAX_NAME} characters.")
    same = KnowledgeStore(db).collection_by_name(account_id, name)
    if same and same.id != collection_id:
        raise Conflict(f"There is already a collection called '{name}'.")
    return name


def collections(db: sqlite_utils.Database, account_id: str) -> list[Collection]:
    """The account's collections, by name, with how many documents each holds."""
    return KnowledgeStore(db).collections(account_id)


def memberships(db: sqlite_utils.Database, account_id: str) -> dict[str, list[str]]:
    """Each of the account's documents' collection ids."""
    return KnowledgeStore(db).memberships(account_id)


def check(db: sqlite_utils.Database, account_id: str, collection_ids: Any) -> list[str]:
    """``collection_ids`` as a list of the account's collection ids, without repeats.

    Raises:
        InvalidInput: not a list of strings, or an id that is not one of the account's
            collections (another account's look the same as ids that never existed).
    """
    if not isinstance(collection_ids, list | tuple) or not all(
        isinstance(one, str) for one in collection_ids
    ):
        raise InvalidInput("'collections' must be a list of collection ids.")
    known = {c.id for c in collections(db, account_id)}
    unknown = [one for one in collection_ids if one not in known]
    if unknown:
        raise InvalidInput(f"No such collection: {unknown[0]}.")
    return list(dict.fromkeys(collection_ids))


def create(
    db: sqlite_utils.Database, account_id: str, actor_role: str, name: Any, now: datetime
) -> Collection:
    with write_transaction(db):
        name = _free_name(db, account_id, actor_role, name)
        if len(collections(db, account_id)) >= MAX_COLLECTIONS:
            raise InvalidInput(f"An account may have at most {MAX_COLLECTIONS} collections.")
        created = Collection(new_id("col"), name, iso(now))
        KnowledgeStore(db).insert_collection(account_id, created)
    return created


def rename(
    db: sqlite_utils.Database, account_id: str, actor_role: str, collection_id: str, name: Any
) -> Collection:
    with write_transaction(db):
        name = _free_name(db, account_id, actor_role, name, collection_id)
        if not KnowledgeStore(db).rename_collection(account_id, collection_id, name):
            raise NotFound("No such collection.")
    return next(c for c in collections(db, account_id) if c.id == collection_id)


def delete(db: sqlite_utils.Database, account_id: str, actor_role: str, collection_id: str) -> None:
    """Delete a collection; its documents stay. An instance limited to it then finds
    nothing there (it never falls back to every document)."""
    _require_manager(actor_role)
    with write_transaction(db):
        if not KnowledgeStore(db).delete_collection(account_id, collection_id):
            raise NotFound("No such collection.")


def file_document(
    db: sqlite_utils.Database,
    account_id: str,
    actor_id: str,
    actor_role: str,
    document_id: str,
    collection_ids: Any,
) -> list[str]:
    """Put a document in exactly ``collection_ids`` (its uploader, owners and admins)."""
    store = KnowledgeStore(db)
    with write_transaction(db):
        doc = service.document(db, account_id, document_id)
        service.require_may_change(doc, actor_id, actor_role)
        chosen = check(db, account_id, collection_ids)
        store.set_memberships(account_id, doc.id, chosen)
    return chosen


def add_documents(
    db: sqlite_utils.Database,
    account_id: str,
    document_ids: Sequence[str],
    collection_ids: Sequence[str],
) -> None:
    """Add just-uploaded documents to collections (already checked with ``check``)."""
    if document_ids and collection_ids:
        with write_transaction(db):
            KnowledgeStore(db).add_memberships(account_id, document_ids, collection_ids)
