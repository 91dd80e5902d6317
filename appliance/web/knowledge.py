"""The knowledge base over HTTP: uploads, status, search, retry and deletion."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import anyio
import sqlite_utils
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from appliance.accounts import service as accounts
from appliance.config import Settings
from appliance.knowledge import collections as kb_collections
from appliance.knowledge import search as kb_search
from appliance.knowledge import service as knowledge
from appliance.knowledge.store import Document
from appliance.web.deps import Ctx, Deps, Json, Member
from appliance.web.identity import Identity
from appliance.web.security import BODY_LIMIT, MULTIPART_OVERHEAD

MAX_FILES = 20


def document_json(doc: Document, view: Listing) -> dict[str, Any]:
    data = asdict(doc)
    for internal in ("sha256", "account_id"):
        data.pop(internal)
    data["uploader"] = view.uploaders.get(doc.uploaded_by or "")
    data["collections"] = view.memberships.get(doc.id, [])
    data["can_delete"] = knowledge.may_change(doc, view.me.user.id, view.me.role)
    return data


@dataclass(frozen=True)
class Listing:
    """What a document list shows beside each document: who uploaded it (their email, while
    they are a member), its collections, and whether the viewer may change it."""

    me: Identity
    uploaders: dict[str, str]
    memberships: dict[str, list[str]]

    @classmethod
    def of(cls, db: sqlite_utils.Database, me: Identity) -> Listing:
        return cls(
            me,
            {m.user_id: m.email for m in accounts.members(db, me.account.id)},
            kb_collections.memberships(db, me.account.id),
        )


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
    async def upload(self, request: Request, me: Member, ctx: Deps) -> Response:
        """Upload one or more files (multipart field ``file`` or ``files``); a ``.zip``
        adds every document inside it.

        202 with ``{"id", "status": "queued"}`` per file (a list for several files); a file
        already in the account is reported with ``"duplicate": true`` and not indexed twice;
        a file of an archive that cannot be added comes back as ``{"filename", "error"}``.
        """
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(status_code=400, detail="Send the files as multipart/form-data.")
        form = await request.form()
        files = _collect(form)
        collection_ids = [str(v) for v in form.getall("collection", [])]
        results = await anyio.to_thread.run_sync(lambda: _add(ctx, me, files, collection_ids))
        single = len(files) == 1 and not knowledge.is_archive(files[0].filename or "")
        return Response(results[0] if single and len(results) == 1 else results, status_code=202)

    @get("/documents", sync_to_thread=True)
    def list_documents(self, me: Member, ctx: Deps) -> list[dict]:
        """The account's documents with status and progress, newest first; each with its
        uploader's email, its collection ids and whether you may delete it."""
        view = Listing.of(ctx.db, me)
        return [document_json(d, view) for d in knowledge.documents(ctx.db, me.account.id)]

    @get("/documents/{document_id:str}", sync_to_thread=True)
    def get_document(self, document_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        """One document: status (queued, extracting, embedding, ready, failed), progress."""
        return _document(ctx, me, document_id)

    @delete("/documents/{document_id:str}", status_code=204, sync_to_thread=True)
    def delete_document(self, document_id: FromPath[str], me: Member, ctx: Deps) -> None:
        """Delete the document, its file, chunks, index rows and vectors (a deletion
        receipt records it). Members delete their own uploads only (403 otherwise)."""
        knowledge.delete_document(
            ctx.db,
            ctx.settings,
            me.account.id,
            document_id,
            ctx.now(),
            actor_id=me.user.id,
            actor_role=me.role,
        )

    @post("/documents/{document_id:str}/retry", status_code=202, sync_to_thread=True)
    def retry_document(self, document_id: FromPath[str], me: Member, ctx: Deps) -> dict:
        """Queue a failed document again."""
        doc = knowledge.retry(ctx.db, me.account.id, document_id, ctx.now())
        ctx.queue.ingest_document(doc.id)
        return document_json(doc, Listing.of(ctx.db, me))

    @put("/documents/{document_id:str}/collections", sync_to_thread=True)
    def file_document(self, document_id: FromPath[str], data: Json, me: Member, ctx: Deps) -> dict:
        """Put a document in exactly these collections (``{"collections": [ids]}``); its
        uploader, owners and admins."""
        ids = (me.account.id, me.user.id, me.role, document_id)
        kb_collections.file_document(ctx.db, *ids, data.get("collections"))
        return _document(ctx, me, document_id)

    @get("/collections", sync_to_thread=True)
    def list_collections(self, me: Member, ctx: Deps) -> list[dict]:
        """The team's collections, by name, with how many documents each holds."""
        return [asdict(c) for c in kb_collections.collections(ctx.db, me.account.id)]

    @post("/collections", status_code=201, sync_to_thread=True)
    def create_collection(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Create a collection (``{"name"}``; owners and admins)."""
        name = data.get("name")
        return asdict(kb_collections.create(ctx.db, me.account.id, me.role, name, ctx.now()))

    @patch("/collections/{collection_id:str}", sync_to_thread=True)
    def rename_collection(
        self, collection_id: FromPath[str], data: Json, me: Member, ctx: Deps
    ) -> dict:
        """Rename a collection (owners and admins)."""
        ids = (me.account.id, me.role, collection_id)
        return asdict(kb_collections.rename(ctx.db, *ids, data.get("name")))

    @delete("/collections/{collection_id:str}", status_code=204, sync_to_thread=True)
    def delete_collection(self, collection_id: FromPath[str], me: Member, ctx: Deps) -> None:
        """Delete a collection; its documents stay (owners and admins)."""
        kb_collections.delete(ctx.db, me.account.id, me.role, collection_id)

    @get("/search", sync_to_thread=True)
    def search(
        self,
        me: Member,
        ctx: Deps,
        q: FromQuery[str] = "",
        k: FromQuery[int | None] = None,
        collection: FromQuery[list[str] | None] = None,
    ) -> dict:
        """Hybrid search over the account's knowledge base (``collection``, repeatable:
        only those collections); ``vector_unavailable``: the model could not embed the
        query (restarting?), so the hits are full-text only."""
        db, settings = ctx.db, ctx.settings
        result = kb_search.search(
            db,
            ctx.inference,
            me.account.id,
            q,
            k or settings.knowledge.search_k,
            kb_search.Tuning.from_settings(settings.knowledge),
            kb_collections.check(db, me.account.id, collection) if collection else None,
        )
        return {
            "hits": [asdict(hit) for hit in result.hits],
            "legs": result.legs,
            "vector_unavailable": result.vector_unavailable,
        }


def _document(ctx: Ctx, me: Identity, document_id: str) -> dict:
    found = knowledge.document(ctx.db, me.account.id, document_id)
    return document_json(found, Listing.of(ctx.db, me))


def _add(ctx: Ctx, me: Identity, files: list[UploadFile], collection_ids: list[str]) -> list[dict]:
    """Add each file (an archive: each document in it), queue the new ones for indexing and
    file them in the chosen collections (checked first: 400 for an unknown id)."""
    chosen = kb_collections.check(ctx.db, me.account.id, [c for c in collection_ids if c])
    results = []
    for upload in files:
        name = upload.filename or "upload"
        add = knowledge.add_archive if knowledge.is_archive(name) else knowledge.add_document
        outcome = add(ctx.db, ctx.settings, me.account.id, me.user.id, name, upload.file, ctx.now())
        for one in outcome if isinstance(outcome, list) else [outcome]:
            if isinstance(one, knowledge.Refusal):
                results.append({"filename": one.filename, "error": one.error})
                continue
            doc = one.document
            if not one.duplicate:
                ctx.queue.ingest_document(doc.id)
            entry = {"id": doc.id, "filename": doc.filename, "status": doc.status}
            results.append({**entry, "duplicate": one.duplicate})
    added = [r["id"] for r in results if "id" in r and not r["duplicate"]]
    kb_collections.add_documents(ctx.db, me.account.id, added, chosen)
    return results


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
    def page(self, me: Member, ctx: Deps) -> Template:
        db = ctx.db
        collections = kb_collections.collections(db, me.account.id)
        return Template(
            "knowledge.html",
            context={
                "me": me,
                "documents": knowledge.documents(db, me.account.id),
                "collections": collections,
                "collection_names": {c.id: c.name for c in collections},
                "view": Listing.of(db, me),
                "may_change": knowledge.may_change,
                "max_upload_mb": ctx.settings.knowledge.max_upload_mb,
            },
        )
