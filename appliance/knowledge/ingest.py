"""Ingestion: extract, chunk, embed and index documents, many at a time.

The worker hands over a batch of queued documents (``tasks.ingest_document`` drains the
queue); each is extracted and chunked on its own, then the chunks of all of them are
embedded together, ``EMBED_BATCH`` texts a request, and written together: a request's
chunks, FTS5 rows and vectors in one transaction. So a stream of small documents costs a
few requests and transactions per batch instead of several per document. Safe to run
again at any point: a document not finished is started again from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import groupby

import sqlite_utils

from appliance.clock import iso, utcnow
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import ApplianceError
from appliance.inference.client import InferenceClient
from appliance.knowledge import chunking, extract
from appliance.knowledge.store import Chunk, Document, KnowledgeStore
from appliance.tokens import estimate_tokens

log = logging.getLogger(__name__)
#: Texts per embedding request (chunks of one document or several).
EMBED_BATCH = 32


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    done: int = 0
    gone: bool = False


def ingest_documents(
    db: sqlite_utils.Database,
    settings: Settings,
    client: InferenceClient,
    document_ids: list[str],
    document_path,
) -> None:
    """Ingest ``document_ids`` (ready ones are skipped); ``document_path`` is
    ``service.document_path``. Raises Unavailable while the inference service is down."""
    store = KnowledgeStore(db)
    pending: list[_Pending] = []
    for document_id in document_ids:
        doc = store.document_any(document_id)
        if doc is None or doc.status == "ready":
            continue
        chunks = _extract_and_chunk(db, settings, client, doc, document_path(settings, doc))
        if chunks:
            pending.append(_Pending(doc, chunks))
    if not pending:
        return
    with write_transaction(db):
        for item in pending:
            if store.document_any(item.doc.id) is None:
                item.gone = True  # deleted while extracting
                continue
            store.delete_chunks(item.doc.id)
            store.set_status(
                item.doc.id, "embedding", _now(), chunks_total=len(item.chunks), chunks_done=0
            )
    work = [(item, chunk) for item in pending if not item.gone for chunk in item.chunks]
    model = None
    for start in range(0, len(work), EMBED_BATCH):
        batch = work[start : start + EMBED_BATCH]
        texts = [f"{c.heading}\n{c.text}" if c.heading else c.text for _, c in batch]
        vectors = client.embed(texts, account_id=batch[0][0].doc.account_id, priority="batch")
        if model is None:
            model = _model_name(client)
            try:
                store.ensure_vectors(len(vectors[0]), model)
            except ValueError as exc:  # the embedding model changed under the index
                for item in pending:
                    if not item.gone:
                        _set(db, item.doc.id, "failed", error=str(exc))
                return
        _write(db, store, batch, vectors, model)
    with write_transaction(db):
        for item in pending:
            if not item.gone and store.document_any(item.doc.id) is not None:
                store.set_status(item.doc.id, "ready", _now())


def _write(db, store: KnowledgeStore, batch, vectors, model: str) -> None:
    """One request's chunks (a run of each of one or more documents) in one transaction."""
    with write_transaction(db):
        for item, run in groupby(zip(batch, vectors, strict=True), key=lambda row: row[0][0]):
            rows = list(run)
            if item.gone or store.document_any(item.doc.id) is None:
                item.gone = True  # deleted while embedding: nothing of it may remain
                store.delete_chunks(item.doc.id)
                continue
            chunks = [chunk for (_, chunk), _ in rows]
            store.add_chunks(item.doc.id, item.doc.account_id, chunks, [v for _, v in rows])
            item.done += len(rows)
            store.set_status(
                item.doc.id, "embedding", _now(), chunks_done=item.done, embedding_model=model
            )


def _extract_and_chunk(db, settings: Settings, client, doc: Document, path) -> list[Chunk]:
    """The document's chunks; on failure the document is marked failed and [] returned."""
    store = KnowledgeStore(db)
    _set(db, doc.id, "extracting", error=None, chunks_done=0, chunks_total=0)
    try:
        extracted = read_as(settings, path, doc.kind)
    except extract.ExtractionError as exc:
        _set(db, doc.id, "failed", error=str(exc))
        return []
    except FileNotFoundError:
        if store.document_any(doc.id) is not None:
            _set(db, doc.id, "failed", error="The uploaded file is missing; upload it again.")
        return []
    cfg = settings.knowledge
    chunks = chunking.chunk_sections(
        extracted.sections,
        _counter(client),
        chunk_tokens=cfg.chunk_tokens,
        overlap_tokens=cfg.chunk_overlap_tokens,
    )
    if not chunks:
        _set(db, doc.id, "failed", error="No text was found in this document.")
    return chunks


def read_as(settings: Settings, path, kind: str) -> extract.Extracted:
    """The text of ``path`` as a ``kind`` file, within the ``knowledge.extract_*`` limits."""
    cfg = settings.knowledge
    return extract.extract(
        path, kind, timeout=cfg.extract_timeout_seconds, memory_mb=cfg.extract_memory_mb
    )


def _counter(client: InferenceClient):
    def count(texts: list[str]) -> list[int]:
        counts = client.count_tokens(texts)
        return counts if counts is not None else [estimate_tokens(t) for t in texts]

    return count


def _model_name(client: InferenceClient) -> str:
    try:
        return str(client.health().get("embedding_model") or "unknown")
    except ApplianceError:
        return "unknown"


def _now() -> str:
    return iso(utcnow())


def _set(db: sqlite_utils.Database, document_id: str, status: str, **fields) -> None:
    with write_transaction(db):
        KnowledgeStore(db).set_status(document_id, status, _now(), **fields)
