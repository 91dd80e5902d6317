"""What the knowledge domain holds about people (``appliance.personal``): documents and
their originals; chunks and vectors are their index and go with them; collections and
which documents each holds."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from appliance import personal
from appliance.config import Settings
from appliance.knowledge import service
from appliance.knowledge.store import KnowledgeStore
from appliance.personal import DERIVED, ERASE, USERS, Table

TABLES = (
    Table("chunks", "account_id = :account", None, DERIVED, False, note="erased with documents"),
    Table("chunk_vectors", "account_id = :account", None, DERIVED, False, note="with documents"),
    Table(
        "documents",
        "account_id = :account",
        f"uploaded_by in {USERS}",
        ERASE,
        True,
        note="originals on disk, chunks, FTS rows and vectors",
        contributed=True,
    ),
    Table("collection_documents", "account_id = :account", None, ERASE, True),
    Table("collections", "account_id = :account", None, ERASE, True),
)
DOCUMENTS = TABLES[2]
PURGES: dict[str, personal.Purge] = {}


def export(db: sqlite_utils.Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    """The rows, and the original of each document."""
    held = personal.held(db, TABLES, scope)
    for row in personal.rows(db, DOCUMENTS, scope):
        path = service.account_dir(settings, row["account_id"]) / row["id"]
        held.files.append((f"documents/{row['id']}-{personal.safe_name(row['filename'])}", path))
    return held


def erase(db: sqlite_utils.Database, settings: Settings, job: personal.Erasure) -> bool:
    store = KnowledgeStore(db)

    def delete_one(row: dict) -> Path:
        doc = store.document_any(row["id"])
        store.delete_document(row["id"])  # chunks, FTS rows and vectors with it
        return service.document_path(settings, doc)

    if not personal.erase_tables(db, TABLES[3:], job):
        return False
    return personal.erase_with_files(db, DOCUMENTS, job, delete_one, kind="document")
