"""Data export: one ZIP with everything held about a person (and, for an owner, the
account), built in the background with progress, downloadable until it expires.

What goes in is driven by the registry: every table marked ``export`` contributes its
rows (as JSON, secret hashes left out), so a table added to the registry is exported
without touching this module. Originals of documents and voice samples are added as
files, and each conversation also as Markdown.

Rows the registry marks ``personal`` (conversations and their messages, exports) belong
to one person: they are in that person's export only, also when the person asking is
the account's owner, whose manifest counts the other members' rows instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlite_utils

from appliance.accounts import service as accounts
from appliance.chat import service as chat
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import NotFound
from appliance.ids import new_id
from appliance.privacy.registry import TABLES, Table


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
        return {
            "id": self.id,
            "status": self.status,
            "progress": self.progress,
            "total": self.total,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "download_url": f"/api/me/export/{self.id}/download"
            if self.status == "ready"
            else None,
        }


_COLUMNS = (
    "id, account_id, user_id, status, progress, total, size, sha256, created_at, "
    "finished_at, expires_at"
)


def export_dir(settings: Settings) -> Path:
    return settings.paths.exports


def export_path(settings: Settings, export_id: str) -> Path:
    return export_dir(settings) / f"{export_id}.zip"


def start(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    user_id: str,
    now: datetime,
) -> Export:
    """Record a queued export (the caller enqueues ``build``)."""
    expires = now + timedelta(hours=settings.privacy.export_ttl_hours)
    export_id = new_id("exp")
    with write_transaction(db):
        db.execute(
            "insert into exports (id, account_id, user_id, status, created_at, expires_at) "
            "values (?, ?, ?, 'queued', ?, ?)",
            [export_id, account_id, user_id, iso(now), iso(expires)],
        )
    return get(db, account_id, user_id, export_id)


def get(db: sqlite_utils.Database, account_id: str, user_id: str, export_id: str) -> Export:
    row = db.execute(
        f"select {_COLUMNS} from exports where id = ? and account_id = ? and user_id = ?",  # noqa: S608
        [export_id, account_id, user_id],
    ).fetchone()
    if row is None:
        raise NotFound("No such export.")
    return Export(*row)


def latest(db: sqlite_utils.Database, account_id: str, user_id: str) -> Export | None:
    row = db.execute(
        f"select {_COLUMNS} from exports where account_id = ? and user_id = ? "  # noqa: S608
        "order by created_at desc limit 1",
        [account_id, user_id],
    ).fetchone()
    return Export(*row) if row else None


def download_path(
    db: sqlite_utils.Database,
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


def _set(db: sqlite_utils.Database, export_id: str, **fields) -> None:
    names = ", ".join(f"{k} = ?" for k in fields)
    with write_transaction(db):
        db.execute(
            f"update exports set {names} where id = ?",  # noqa: S608 - fixed names
            [*fields.values(), export_id],
        )


def _exists(db: sqlite_utils.Database, name: str) -> bool:
    return (
        db.execute(
            "select 1 from sqlite_master where name = ? and type = 'table'", [name]
        ).fetchone()
        is not None
    )


def _condition(table: Table, owner: bool) -> str | None:
    parts = [table.user] + ([table.account] if owner and not table.personal else [])
    parts = [p for p in parts if p]
    return " or ".join(f"({p})" for p in parts) if parts else None


def _others(db: sqlite_utils.Database, tables: list[Table], params: dict) -> dict[str, int]:
    """For an owner's manifest: how many personal rows of the other members exist."""
    counts = {}
    for table in tables:
        if table.personal and table.account and table.user:
            counts[table.name] = db.execute(
                f"select count(*) from {table.name} "  # noqa: S608 - registry names
                f"where ({table.account}) and not ({table.user})",
                params,
            ).fetchone()[0]
    return counts


def _select(db: sqlite_utils.Database, table: Table, owner: bool, params: dict):
    """A cursor over the table's rows for this export, or None when it has none to give."""
    condition = _condition(table, owner)
    if condition is None:
        return None
    return db.execute(f"select * from {table.name} where {condition}", params)  # noqa: S608


def _rows(cursor, table: Table) -> Iterator[dict]:
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield {k: v for k, v in zip(names, row, strict=True) if k not in table.hidden}


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

    def __init__(self, db: sqlite_utils.Database, export_id: str) -> None:
        self.db, self.export_id, self.done, self.written_at = db, export_id, 0, 0.0

    def step(self) -> None:
        self.done += 1
        if time.monotonic() - self.written_at >= 0.5:
            _set(self.db, self.export_id, progress=self.done)
            self.written_at = time.monotonic()


def build(db: sqlite_utils.Database, settings: Settings, export_id: str, now: datetime) -> Export:
    """Write the ZIP for a queued export (idempotent: a rerun starts the file again).

    Rows are streamed from the database into the archive table by table, so a large
    account's export does not need its content in memory.
    """
    row = db.execute(
        f"select {_COLUMNS} from exports where id = ?",  # noqa: S608
        [export_id],
    ).fetchone()
    if row is None:
        raise NotFound("No such export.")
    job = Export(*row)
    if job.status == "ready":
        return job
    owner = accounts.role_in(db, job.account_id, job.user_id) == "owner"
    params = {"account": job.account_id, "users": json.dumps([job.user_id])}
    tables = [t for t in TABLES if t.export and _exists(db, t.name)]
    by_name = {t.name: t for t in tables}
    files = _files(settings, db, by_name, owner, params)
    conversations = _conversation_ids(db, by_name, owner, params)
    total = len(tables) + len(files) + len(conversations)
    _set(db, job.id, status="building", progress=0, total=total)
    directory = export_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = export_path(settings, job.id)
    partial = target.with_suffix(".part")
    progress = _Progress(db, job.id)
    counts: dict[str, int] = {}
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", README)
        for table in tables:
            cursor = _select(db, table, owner, params)
            counts[table.name] = (
                _write_rows(archive, f"data/{table.name}.json", _rows(cursor, table))
                if cursor is not None
                else _write_rows(archive, f"data/{table.name}.json", iter(()))
            )
            progress.step()
        for name, path in files:
            if path.is_file():
                archive.write(path, name)
            progress.step()
        for conversation_id in conversations:
            conversation = chat.get(db, job.account_id, job.user_id, conversation_id)
            archive.writestr(
                f"conversations/{conversation_id}.md", conversation_markdown(conversation)
            )
            progress.step()
        manifest = {
            "export_id": job.id,
            "created_at": iso(now),
            "user_id": job.user_id,
            "account_id": job.account_id,
            "scope": "account and user" if owner else "user",
            "tables": counts,
            "files": [name for name, _ in files],
        }
        if owner:
            manifest["other_members"] = _others(db, tables, params)
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    os.chmod(partial, 0o600)
    digest = hashlib.sha256()
    with partial.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    os.replace(partial, target)
    _set(
        db,
        job.id,
        status="ready",
        progress=total,
        size=target.stat().st_size,
        sha256=digest.hexdigest(),
        finished_at=iso(now),
    )
    return get(db, job.account_id, job.user_id, job.id)


def fail(db: sqlite_utils.Database, export_id: str) -> None:
    _set(db, export_id, status="failed")


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._- " else "_" for c in name).strip(". ")
    return cleaned[:120] or "file"


def _files(
    settings: Settings, db: sqlite_utils.Database, tables: dict, owner: bool, params: dict
) -> list[tuple[str, Path]]:
    """(name in the ZIP, path on disk) of the originals this export includes."""
    from appliance.knowledge import service as knowledge
    from appliance.persona import voice

    files = []
    for kind, folder in (("documents", "documents"), ("voice_samples", "voice_samples")):
        cursor = _select(db, tables[kind], owner, params) if kind in tables else None
        for item in _rows(cursor, tables[kind]) if cursor is not None else ():
            if kind == "documents":
                path = knowledge.account_dir(settings, item["account_id"]) / item["id"]
            else:
                path = voice.sample_path(settings, item["account_id"], item["id"])
            files.append((f"{folder}/{item['id']}-{_safe_name(item['filename'])}", path))
    return files


def _conversation_ids(
    db: sqlite_utils.Database, tables: dict, owner: bool, params: dict
) -> list[str]:
    if "conversations" not in tables:
        return []
    cursor = _select(db, tables["conversations"], owner, params)
    return [row["id"] for row in _rows(cursor, tables["conversations"])] if cursor else []


def conversation_markdown(conversation: chat.Conversation) -> str:
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    lines.append(f"- id: {conversation.id}")
    lines.append(f"- created: {conversation.created_at}")
    lines.append("")
    for message in conversation.messages:
        who = "You" if message.role == "user" else "Assistant"
        lines += [f"## {who} ({message.created_at})", "", message.content, ""]
    return "\n".join(lines)


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
