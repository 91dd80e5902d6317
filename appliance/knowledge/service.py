"""Rules of the knowledge base: upload, ingestion, status, retry and deletion.

Uploaded originals live under ``DATA_DIR/files/<account>/<document id>``; the original
name is only metadata. Ingestion runs in the worker (``ingest``), is idempotent, and a
document interrupted half-way is started again from scratch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import sqlite_utils

from appliance import receipts
from appliance.accounts.models import MANAGERS
from appliance.clock import iso, utcnow
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, NotAllowed, NotFound, TooLarge
from appliance.ids import new_id
from appliance.inference.client import InferenceClient
from appliance.knowledge import extract
from appliance.knowledge.ingest import ingest_documents, read_as
from appliance.knowledge.store import Document, KnowledgeStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """The outcome for one file: a new queued document or an existing duplicate."""

    document: Document
    duplicate: bool


def account_dir(settings: Settings, account_id: str) -> Path:
    return settings.paths.files / account_id


def document_path(settings: Settings, doc: Document) -> Path:
    return account_dir(settings, doc.account_id) / doc.id


def _upload_dir(settings: Settings, account_id: str) -> Path:
    directory = account_dir(settings, account_id)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _copy(settings: Settings, filename: str, stream: BinaryIO, out: BinaryIO, digest=None):
    """Copy ``stream`` to ``out`` within ``knowledge.max_upload_mb``: its head and size."""
    limit = settings.knowledge.max_upload_mb * 1024 * 1024
    head, size = b"", 0
    for block in iter(lambda: stream.read(1 << 20), b""):
        size += len(block)
        if size > limit:
            raise TooLarge(f"{filename} is larger than {settings.knowledge.max_upload_mb} MB.")
        if len(head) < extract.HEAD_BYTES:
            head += block[: extract.HEAD_BYTES - len(head)]
        if digest is not None:
            digest.update(block)
        out.write(block)
    return head, size


def add_document(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    user_id: str | None,
    filename: str,
    stream: BinaryIO,
    now: datetime,
) -> Upload:
    """Store an upload and queue it for ingestion (the caller enqueues the task).

    The content is hashed and size-checked while it is copied to a temporary file in the
    account's directory; nothing is kept if a check fails.

    Raises:
        TooLarge: over ``knowledge.max_upload_mb`` or the account's remaining quota.
        ExtractionError: the content is not a supported type, or does not match its name.
    """
    store = KnowledgeStore(db)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=_upload_dir(settings, account_id), prefix=".upload-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            head, size = _copy(settings, filename, stream, out, digest)
        kind = extract.detect_type(filename, head)
        sha = digest.hexdigest()
        with write_transaction(db):
            existing = store.by_hash(account_id, sha)
            if existing is not None:
                return Upload(existing, duplicate=True)
            quota = settings.knowledge.quota_mb * 1024 * 1024
            used = store.used_bytes(account_id)
            if used + size > quota:
                left = max(0, quota - used) / (1024 * 1024)
                raise TooLarge(
                    f"Not enough storage left for {filename}: {left:.1f} MB of the "
                    f"account's {settings.knowledge.quota_mb} MB remain."
                )
            doc = Document(
                id=new_id("doc"),
                account_id=account_id,
                uploaded_by=user_id,
                filename=filename[:255],
                kind=kind,
                size=size,
                sha256=sha,
                status="queued",
                error=None,
                chunks_total=0,
                chunks_done=0,
                embedding_model=None,
                created_at=iso(now),
                updated_at=iso(now),
            )
            store.insert_document(doc)
            os.replace(tmp, document_path(settings, doc))
        return Upload(doc, duplicate=False)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Refusal:
    """A file of an archive or folder that was not added, and why (for the user)."""

    filename: str
    error: str


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(".zip")


def add_archive(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    user_id: str | None,
    filename: str,
    stream: BinaryIO,
    now: datetime,
) -> list[Upload | Refusal]:
    """Add every document in a ZIP archive (folders flattened; each member checked as an
    upload of its own). The archive meets the caps a DOCX does before any member is read;
    a member that cannot be added is reported and the rest go on.

    Raises:
        TooLarge: the archive is over ``knowledge.max_upload_mb``.
        ExtractionError: the archive is not a ZIP, or fails a cap.
    """
    directory = _upload_dir(settings, account_id)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".archive-") as copy:
        _copy(settings, filename, stream, copy)
        copy.flush()
        infos = extract.check_archive(Path(copy.name), "This ZIP archive")
        outcomes: list[Upload | Refusal] = []
        with zipfile.ZipFile(copy) as archive:
            for info in infos:
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                if info.is_dir() or not name or name.startswith(".") or "__MACOSX" in info.filename:
                    continue
                try:
                    with archive.open(info) as member:
                        outcomes.append(
                            add_document(db, settings, account_id, user_id, name, member, now)
                        )
                except (InvalidInput, TooLarge) as exc:
                    outcomes.append(Refusal(name, str(exc)))
                except (zipfile.BadZipFile, zlib.error, EOFError):  # its data is not what
                    # the archive's directory says (size, checksum)
                    outcomes.append(Refusal(name, "This file is damaged in the ZIP archive."))
    return outcomes


def documents(db: sqlite_utils.Database, account_id: str) -> list[Document]:
    return KnowledgeStore(db).documents(account_id)


def used_bytes(db: sqlite_utils.Database, account_id: str) -> int:
    """Bytes of the account's uploaded documents (what counts against its quota)."""
    return KnowledgeStore(db).used_bytes(account_id)


def document(db: sqlite_utils.Database, account_id: str, document_id: str) -> Document:
    found = KnowledgeStore(db).document(account_id, document_id)
    if found is None:
        raise NotFound("No such document.")
    return found


def may_change(doc: Document, actor_id: str | None, actor_role: str) -> bool:
    """Owners and admins may delete or file any document of the team; a member only
    those they uploaded."""
    return actor_role in MANAGERS or (actor_id is not None and doc.uploaded_by == actor_id)


def require_may_change(doc: Document, actor_id: str | None, actor_role: str) -> None:
    if not may_change(doc, actor_id, actor_role):
        raise NotAllowed(
            "Only the person who uploaded this document, or an owner or admin of the team, "
            "can change or delete it."
        )


def delete_document(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    document_id: str,
    now: datetime | None = None,
    *,
    actor_id: str | None,
    actor_role: str,
) -> None:
    """Delete the document, its chunks, FTS5 rows and vectors in one transaction, then
    its file. ``secure_delete`` overwrites the freed pages; a deletion receipt (counts
    and the file's hash, no content) records it.

    Raises:
        NotAllowed: a member deleting someone else's upload.
    """
    store = KnowledgeStore(db)
    with write_transaction(db):
        doc = document(db, account_id, document_id)
        require_may_change(doc, actor_id, actor_role)
        chunks = db["chunks"].count_where("document_id = ?", [doc.id])
        store.delete_document(doc.id)
        counts = {"documents": 1, "chunks": chunks, "chunks_fts": chunks, "chunk_vectors": chunks}
        hashes = [{"kind": "document", "sha256": doc.sha256}]
        what = f"document {doc.id} deleted by its account"
        receipts.write(db, account_id, what, counts, hashes, now or utcnow())
    document_path(settings, doc).unlink(missing_ok=True)


def passage_texts(
    db: sqlite_utils.Database, account_id: str, chunk_ids: list[int]
) -> dict[int, str]:
    """The current text of cited passages (a deleted document's are gone)."""
    return {
        i: row["text"] for i, row in KnowledgeStore(db).chunk_rows(chunk_ids, account_id).items()
    }


def read_document(settings: Settings, path: Path, filename: str) -> extract.Extracted:
    """The text of the file at ``path`` read as an upload called ``filename`` is read: its
    type from its content and name, then extracted within the ``knowledge.extract_*``
    limits (everything but plain text and Markdown in the sandboxed worker). Voice
    samples are read this way.

    Raises:
        ExtractionError: unsupported, not what its name says, unreadable, or no text.
    """
    with path.open("rb") as f:
        kind = extract.detect_type(filename, f.read(extract.HEAD_BYTES))
    return read_as(settings, path, kind)


def retry(db: sqlite_utils.Database, account_id: str, document_id: str, now: datetime) -> Document:
    """Queue a failed document again (the caller enqueues the task)."""
    store = KnowledgeStore(db)
    with write_transaction(db):
        doc = document(db, account_id, document_id)
        if doc.status != "failed":
            raise InvalidInput("Only a failed document can be retried.")
        store.set_status(doc.id, "queued", iso(now), error=None, chunks_done=0, chunks_total=0)
    return document(db, account_id, document_id)


def unfinished(db: sqlite_utils.Database) -> list[Document]:
    return KnowledgeStore(db).unfinished()


def ingest(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    document_ids: str | list[str],
) -> None:
    """Extract, chunk, embed and index documents (``ingest.py``); safe to run again.

    Raises:
        Unavailable: the inference service is down (the task retries later).
    """
    ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)
    ingest_documents(db, settings, client, ids, document_path)


def queued(db: sqlite_utils.Database, limit: int) -> list[str]:
    """Ids of the oldest queued documents (for the worker to take several at once)."""
    return KnowledgeStore(db).queued(limit)


def audit(db: sqlite_utils.Database, settings: Settings) -> list[str]:
    """Orphans anywhere in the knowledge base, as readable lines (empty: all clean)."""
    store = KnowledgeStore(db)
    checks = [
        ("chunks", "document_id not in (select id from documents)", "chunks without a document")
    ]
    if store.has_vectors():
        checks += [
            ("chunk_vectors", "rowid not in (select id from chunks)", "vectors without a chunk"),
            ("chunks", "id not in (select rowid from chunk_vectors)", "chunks without a vector"),
        ]
    problems = [
        f"{n} {what}" for table, where, what in checks if (n := db[table].count_where(where))
    ]
    try:
        db.execute("insert into chunks_fts (chunks_fts, rank) values ('integrity-check', 1)")
    except Exception as exc:  # the FTS index disagrees with the chunks table
        problems.append(f"full-text index out of step with the chunks: {exc}")
    rows = {(d.account_id, d.id) for d in store.documents(None)}
    files = {(f.parent.name, f.name) for f in settings.paths.files.glob("*/doc_*") if f.is_file()}
    problems += [f"file without a document: files/{a}/{d}" for a, d in sorted(files - rows)]
    problems += [f"document without a file: {d} (account {a})" for a, d in sorted(rows - files)]
    return problems


def index_state(db: sqlite_utils.Database) -> dict[str, Any]:
    """How many documents there are, and the embedding model and dimension of the vectors."""
    store = KnowledgeStore(db)
    dimension = store.meta("embedding_dim")
    return {
        "documents": db["documents"].count,
        "embedding_model": store.meta("embedding_model"),
        "dimension": int(dimension) if dimension else None,
    }


def status_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Documents by status (queued, extracting, embedding, ready, failed)."""
    rows = db.query("select status, count(*) as n from documents group by status")
    return {row["status"]: row["n"] for row in rows}


def reindex(db: sqlite_utils.Database) -> list[str]:
    """Drop every chunk, index row and vector and queue every document again.

    For a change of embedding model (its vectors are not comparable, and may differ in
    dimension). Returns the document ids to enqueue.
    """
    store = KnowledgeStore(db)
    with write_transaction(db):
        ids = [row[0] for row in db.execute("select id from documents")]
        for document_id in ids:
            store.delete_chunks(document_id)
            store.set_status(document_id, "queued", iso(utcnow()), chunks_done=0, chunks_total=0)
        if store.has_vectors():
            db.execute("drop table chunk_vectors")
        db.execute("delete from kb_meta where key in ('embedding_dim', 'embedding_model')")
    return ids
