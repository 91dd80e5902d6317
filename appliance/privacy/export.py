"""Data export: one ZIP with everything held about a person (and, for an owner, the
account), built in the background with progress, downloadable until it expires.

What goes in is what every part of ``appliance.personal`` holds (docs/privacy.md): rows
as JSON without secret hashes, original files, each conversation also as Markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlite_utils import Database

from appliance import personal
from appliance.accounts import service as accounts
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import NotFound
from appliance.ids import new_id


@dataclass(frozen=True)
class Export:
    id: str
    account_id: str
    user_id: str
    status: str
    progress: int
    total: int
    size: int
    sha256: str | None
    created_at: str
    finished_at: str | None
    expires_at: str

    def public(self) -> dict:
        ready = self.status == "ready"
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("account_id", "user_id")},
            "download_url": f"/api/me/export/{self.id}/download" if ready else None,
        }


def export_path(settings: Settings, export_id: str) -> Path:
    return settings.paths.exports / f"{export_id}.zip"


def start(db: Database, settings: Settings, account_id: str, user_id: str, now: datetime) -> Export:
    """Record a queued export (the caller enqueues ``build``)."""
    expires = iso(now + timedelta(hours=settings.privacy.export_ttl_hours))
    export_id = new_id("exp")
    row = {"id": export_id, "account_id": account_id, "user_id": user_id, "status": "queued"}
    with write_transaction(db):
        db["exports"].insert({**row, "created_at": iso(now), "expires_at": expires})
    return get(db, account_id, user_id, export_id)


def _one(db: Database, where: str, params: list) -> Export | None:
    row = next(db["exports"].rows_where(where, params, order_by="created_at desc", limit=1), None)
    return Export(**row) if row else None


def get(db: Database, account_id: str, user_id: str, export_id: str) -> Export:
    found = _one(db, "id = ? and account_id = ? and user_id = ?", [export_id, account_id, user_id])
    if found is None:
        raise NotFound("No such export.")
    return found


def latest(db: Database, account_id: str, user_id: str) -> Export | None:
    return _one(db, "account_id = ? and user_id = ?", [account_id, user_id])


def download_path(
    db: Database,
    settings: Settings,
    account_id: str,
    user_id: str,
    export_id: str,
    now: datetime,
) -> Path:
    """The ZIP of a ready, unexpired export of this person.

    Raises:
        NotFound: unknown, someone else's, not ready or expired.
    """
    found = get(db, account_id, user_id, export_id)
    path = export_path(settings, found.id)
    if found.status != "ready" or found.expires_at <= iso(now) or not path.is_file():
        raise NotFound("No such export (it may have expired: start a new one).")
    return path


def _set(db: Database, export_id: str, **fields) -> None:
    with write_transaction(db):
        db["exports"].update(export_id, fields)


def _write_rows(archive: zipfile.ZipFile, name: str, rows: Iterator[dict]) -> int:
    """Stream rows into ``name`` as one JSON array (never all of them in memory)."""
    count = 0
    with archive.open(name, "w") as out:
        out.write(b"[")
        for row in rows:
            out.write((b",\n" if count else b"\n") + json.dumps(row, default=str).encode())
            count += 1
        out.write(b"\n]\n")
    return count


class _Progress:
    """Writes progress at most every half second (plus the last step)."""

    def __init__(self, db: Database, export_id: str) -> None:
        self.db, self.export_id, self.done, self.written_at = db, export_id, 0, 0.0

    def step(self) -> None:
        self.done += 1
        if time.monotonic() - self.written_at >= 0.5:
            _set(self.db, self.export_id, progress=self.done)
            self.written_at = time.monotonic()


def build(db: Database, settings: Settings, export_id: str, now: datetime) -> Export:
    """Write the ZIP for a queued export (idempotent: a rerun starts the file again).

    Rows are streamed from the database into the archive table by table, so a large
    account's export does not need its content in memory.
    """
    job = _one(db, "id = ?", [export_id])
    if job is None:
        raise NotFound("No such export.")
    if job.status == "ready":
        return job
    scope = personal.Scope(
        account_id=job.account_id,
        user_id=job.user_id,
        email=accounts.user(db, job.user_id).email,
        owner=accounts.role_in(db, job.account_id, job.user_id) == "owner",
    )
    held = [part.export(db, settings, scope) for part in personal.parts()]
    tables = {name: rows for h in held for name, rows in h.tables.items()}
    files = [file for h in held for file in h.files]
    texts = [text for h in held for text in h.texts]
    total = len(tables) + len(files) + len(texts)
    _set(db, job.id, status="building", progress=0, total=total)
    settings.paths.exports.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = export_path(settings, job.id)
    partial = target.with_suffix(".part")
    progress = _Progress(db, job.id)
    counts: dict[str, int] = {}
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", README)
        for name, rows in tables.items():
            counts[name] = _write_rows(archive, f"data/{name}.json", rows())
            progress.step()
        for name, path in files:
            if path.is_file():
                archive.write(path, name)
            progress.step()
        for name, text in texts:
            archive.writestr(name, text())
            progress.step()
        manifest = {
            "export_id": job.id,
            "created_at": iso(now),
            "user_id": job.user_id,
            "account_id": job.account_id,
            "scope": "account and user" if scope.owner else "user",
            "tables": counts,
            "files": [name for name, _ in files],
        }
        if scope.owner:
            manifest["other_members"] = {k: v for h in held for k, v in h.others.items()}
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    os.chmod(partial, 0o600)
    with partial.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    os.replace(partial, target)
    done = {"status": "ready", "progress": total, "finished_at": iso(now)}
    _set(db, job.id, size=target.stat().st_size, sha256=digest.hexdigest(), **done)
    return get(db, job.account_id, job.user_id, job.id)


def fail(db: Database, export_id: str) -> None:
    _set(db, export_id, status="failed")


README = """Your data export
================

manifest.json      what this export holds (tables and row counts, files)
data/*.json        every row held about you (and, for an owner, the account), one file
                   per table; API keys are metadata only (the key itself is never stored)
documents/         the original files you uploaded to the knowledge base
voice_samples/     the voice-training files you uploaded
conversations/     each of your conversations as Markdown (the JSON is in
                   data/messages.json)

Conversations belong to the person who had them: another member's conversations are
only in their own export. An owner's manifest counts them ("other_members").
"""
