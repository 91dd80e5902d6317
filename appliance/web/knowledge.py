"""The knowledge base over HTTP: uploads, status, search, retry and deletion."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from appliance.clock import Clock
from appliance.config import Settings
from appliance.inference.client import InferenceClient
from appliance.knowledge import search as kb_search
from appliance.knowledge import service as knowledge
from appliance.knowledge.store import Document
from appliance.tasks import TaskQueue
from appliance.web.identity import Identity
from appliance.web.security import BODY_LIMIT, MULTIPART_OVERHEAD

MAX_FILES = 20


def document_json(doc: Document) -> dict[str, Any]:
    data = asdict(doc)
    for internal in ("sha256", "account_id"):
        data.pop(internal)
    return data


def upload_limit(settings: Settings) -> tuple[int, str]:
    """One upload request: a file of ``max_upload_mb`` (several files share it) + framing."""
    mb = settings.knowledge.max_upload_mb
    return mb * 1024 * 1024 + MULTIPART_OVERHEAD, f"Files may be at most {mb} MB each."


class KnowledgeApi(Controller):
    path = "/api"
    tags = ["knowledge"]

    @post(
        "/documents",
        status_code=202,
        opt={BODY_LIMIT: upload_limit},
        request_max_body_size=None,
    )
    async def upload(
        self,
        request: Request,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Upload one or more files (multipart field ``file`` or ``files``); a ``.zip``
        adds every document inside it.

        202 with ``{"id", "status": "queued"}`` per file (a list for several files); a file
        already in the account is reported with ``"duplicate": true`` and not indexed twice;
        a file of an archive that cannot be added comes back as ``{"filename", "error"}``.
        """
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(status_code=400, detail="Send the files as multipart/form-data.")
        files = _collect(await request.form())
        results = []
        for upload in files:
            name = upload.filename or "upload"
            add = knowledge.add_archive if knowledge.is_archive(name) else knowledge.add_document
            outcome = await anyio.to_thread.run_sync(
                lambda upload=upload, name=name, add=add: add(
                    db, settings, me.account.id, me.user.id, name, upload.file, clock()
                )
            )
            outcomes = outcome if isinstance(outcome, list) else [outcome]
            for one in outcomes:
                if isinstance(one, knowledge.Refusal):
                    results.append({"filename": one.filename, "error": one.error})
                    continue
                if not one.duplicate:
                    queue.ingest_document(one.document.id)
                results.append(
                    {
                        "id": one.document.id,
                        "filename": one.document.filename,
                        "status": one.document.status,
                        "duplicate": one.duplicate,
                    }
                )
        single = len(files) == 1 and not knowledge.is_archive(files[0].filename or "")
        if single and len(results) == 1:
            return Response(results[0], status_code=202)
        return Response(results, status_code=202)

    @get("/documents", sync_to_thread=True)
    def list_documents(
        self, me: NamedDependency[Identity], db: NamedDependency[sqlite_utils.Database]
    ) -> list[dict]:
        """The account's documents with status and progress, newest first."""
        return [document_json(d) for d in knowledge.documents(db, me.account.id)]

    @get("/documents/{document_id:str}", sync_to_thread=True)
    def get_document(
        self,
        document_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """One document: status (queued, extracting, embedding, ready, failed), progress."""
        return document_json(knowledge.document(db, me.account.id, document_id))

    @delete("/documents/{document_id:str}", status_code=204, sync_to_thread=True)
    def delete_document(
        self,
        document_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> None:
        """Delete the document, its file, chunks, index rows and vectors (a deletion
        receipt records it)."""
        knowledge.delete_document(db, settings, me.account.id, document_id, clock())

    @post("/documents/{document_id:str}/retry", status_code=202, sync_to_thread=True)
    def retry_document(
        self,
        document_id: FromPath[str],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> dict:
        """Queue a failed document again."""
        doc = knowledge.retry(db, me.account.id, document_id, clock())
        queue.ingest_document(doc.id)
        return document_json(doc)

    @get("/search", sync_to_thread=True)
    def search(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        inference: NamedDependency[InferenceClient],
        settings: NamedDependency[Settings],
        q: FromQuery[str] = "",
        k: FromQuery[int | None] = None,
    ) -> dict:
        """Hybrid search over the account's knowledge base; ``vector_unavailable``: the
        model could not embed the query (restarting?), so the hits are full-text only."""
        result = kb_search.search(
            db,
            inference,
            me.account.id,
            q,
            k or settings.knowledge.search_k,
            kb_search.Tuning.from_settings(settings.knowledge),
        )
        return {
            "hits": [asdict(hit) for hit in result.hits],
            "legs": result.legs,
            "vector_unavailable": result.vector_unavailable,
        }


def _collect(form) -> list[UploadFile]:
    files = []
    for key in ("file", "files"):
        values = form.getall(key, [])
        files.extend(value for value in values if isinstance(value, UploadFile))
    if not files:
        raise HTTPException(status_code=400, detail="No file in the upload (field 'file').")
    if len(files) > MAX_FILES:
        raise HTTPException(status_code=400, detail=f"At most {MAX_FILES} files at once.")
    return files


class KnowledgePages(Controller):
    include_in_schema = False

    @get("/knowledge", sync_to_thread=True)
    def page(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
    ) -> Template:
        return Template(
            "knowledge.html",
            context={
                "me": me,
                "documents": knowledge.documents(db, me.account.id),
                "max_upload_mb": settings.knowledge.max_upload_mb,
            },
        )
