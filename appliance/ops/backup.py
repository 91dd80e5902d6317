"""Backups of the data dir: one ``.tar.gz`` with a manifest of SHA-256 checksums.

What a backup holds and leaves out, and why, is in docs/operations.md ("Backups"): a
``VACUUM INTO`` copy of the database that passed ``integrity_check``, the uploads, the
secrets and ``appliance.toml``; never ``queue.db`` (its task payloads are unpickled) or
the outbox. Restore accepts exactly the names a backup writes (``MEMBERS``), each with
its manifest's SHA-256, before it writes anything; ``prune`` keeps no backup past
``privacy.erase_window_days``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlite_utils import Database

import appliance
from appliance import permissions, vault
from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput, NotFound

FORMAT = 1
MANIFEST = "manifest.json"
PREFIX = "appliance-backup-"
SUFFIX = ".tar.gz"
NAME = re.compile(re.escape(PREFIX) + r"(\d{8}T\d{6}Z)" + re.escape(SUFFIX) + "$")
CHUNK = 1 << 20
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"  # no hidden or temporary files (.upload-…)
#: Every name a backup writes, besides the manifest: the database, the data dir's
#: settings, the generated secrets (not the one-time setup token) and the uploads
#: (``files/<account>/<id>``, ``files/<account>/voice/<id>``).
MEMBERS = re.compile(
    r"appliance\.db|appliance\.toml"
    rf"|secrets/(?:{'|'.join(vault.SECRETS)})"
    rf"|files/{_NAME}/(?:voice/)?{_NAME}"
)


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created_at: str
    files: int
    bytes: int
    tables: dict[str, int]


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_database(path: Path) -> dict[str, int]:
    """Full ``integrity_check`` of a database file; returns rows per table.

    Raises:
        InvalidInput: the check reports a problem.
    """
    from appliance.db import load_vec

    with Database(path) as db:
        load_vec(db.conn)
        result = [row[0] for row in db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise InvalidInput(f"database copy failed integrity_check: {result[0]}")
        names = sorted(name for name in db.table_names() if not name.startswith("sqlite_"))
        return {name: db[name].count for name in names if not db[name].virtual_table_using}


def _data_files(settings: Settings) -> Iterator[tuple[Path, str]]:
    """(path on disk, name in the archive) of every file besides the database."""
    root = settings.paths.data_dir
    for directory in (settings.paths.files, settings.paths.secrets):
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            name = path.relative_to(root).as_posix()
            if MEMBERS.fullmatch(name):
                yield path, name
    config = root / "appliance.toml"
    if config.is_file():
        yield config, "appliance.toml"


def backup(settings: Settings, dest: Path, now: datetime) -> BackupInfo:
    """Write a backup into ``dest`` (a directory, or a ``.tar.gz`` path); safe while serving.

    Returns where it went. A ``NAME.sha256`` file beside the archive records the archive's
    own checksum.
    """
    from appliance.db import open_db

    dest = Path(dest)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = dest if dest.name.endswith(SUFFIX) else dest / f"{PREFIX}{stamp}{SUFFIX}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise Conflict(f"{target} already exists")
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=target.parent))
    try:
        copy = work / "appliance.db"
        with open_db(settings) as db:
            db.execute("VACUUM INTO ?", [str(copy)])
        tables = check_database(copy)
        entries = [(copy, "appliance.db"), *_data_files(settings)]
        manifest = {
            "format": FORMAT,
            "appliance_version": appliance.__version__,
            "created_at": now.astimezone(UTC).isoformat(),
            "tables": tables,
            "files": {},
        }
        total = 0
        with permissions.private_file(target) as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for path, name in entries:
                added = _add_file(tar, path, name)
                if added is None:
                    continue  # deleted meanwhile (a document removed while we ran)
                manifest["files"][name] = added
                total += added["size"]
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _add_file(tar, work / MANIFEST, MANIFEST)
        target.with_name(target.name + ".sha256").write_text(
            f"{sha256_file(target)}  {target.name}\n"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupInfo(target, manifest["created_at"], len(entries), total, tables)


class _Hashing:
    """A file wrapper that hashes what is read through it."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.digest.update(block)
        return block


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> dict | None:
    """Stream one file into the archive; its checksum is of exactly the bytes added."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        stat = os.fstat(handle.fileno())
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = stat.st_size, 0o600, int(stat.st_mtime)
        reader = _Hashing(handle)
        tar.addfile(info, reader)
    return {"sha256": reader.digest.hexdigest(), "size": info.size}


def verify(src: Path) -> dict:
    """Check an archive without extracting it; returns its manifest.

    Raises:
        InvalidInput: the archive's checksum (``.sha256`` beside it) or a member's differs,
            its members are not the manifest's, not plain files with safe relative names,
            or not names a backup writes (``MEMBERS``).
    """
    src = Path(src)
    if not src.is_file():
        raise NotFound(f"no backup at {src}")
    sidecar = src.with_name(src.name + ".sha256")
    if sidecar.exists() and sha256_file(src) != sidecar.read_text().split()[0]:
        raise InvalidInput(f"{src}: the archive's checksum does not match {sidecar.name}")
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            by_name = {}
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not member.isfile() or member.name.startswith("/") or ".." in parts or not parts:
                    raise InvalidInput(f"unsafe or unexpected archive member: {member.name!r}")
                if member.name != MANIFEST and not MEMBERS.fullmatch(member.name):
                    raise InvalidInput(f"{src}: {member.name!r} is not part of a backup")
                by_name[member.name] = member
            if MANIFEST not in by_name:
                raise InvalidInput(f"{src}: no {MANIFEST}: not an appliance backup")
            manifest = json.loads(tar.extractfile(by_name[MANIFEST]).read())
            listed = manifest.get("files", {})
            if set(by_name) - {MANIFEST} != set(listed):
                raise InvalidInput(f"{src}: the archive's files differ from its manifest")
            for name, expected in listed.items():
                digest = hashlib.file_digest(tar.extractfile(by_name[name]), "sha256")
                if digest.hexdigest() != expected["sha256"]:
                    raise InvalidInput(f"{src}: {name} does not match its checksum")
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{src}: not a readable backup archive ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise InvalidInput(f"{src}: backup format {manifest.get('format')} is not supported")
    if "appliance.db" not in listed:
        raise InvalidInput(f"{src}: the archive has no database")
    return manifest


def processes_using(settings: Settings) -> list[int]:
    """Pids of processes that have the database or the queue open (Linux /proc)."""
    targets = {
        str(p.resolve()) for p in (settings.paths.database, settings.paths.queue) if p.exists()
    }
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        found.append(int(proc.name))
                        break
    return found


def web_answers(settings: Settings) -> bool:
    """Whether the web service of these settings answers on its port (it may hold no
    database connection between requests, so the /proc scan alone can miss it)."""
    import httpx

    url = f"{settings.local_web_url}/healthz"
    try:
        # Our own service on this machine: its certificate may be self-signed.
        return httpx.get(url, timeout=1, verify=False).status_code == 200  # noqa: S501
    except httpx.HTTPError:
        return False


def restore(settings: Settings, src: Path, *, replace: bool = False) -> dict:
    """Restore a verified backup into this data dir; the services must be stopped.

    Raises:
        Conflict: a process has the database open, or there is a database and ``replace``
            is false.
        InvalidInput: the archive fails verification (nothing is changed then).
    """
    busy = processes_using(settings)
    if busy or web_answers(settings):
        held = f"pids {', '.join(map(str, busy))} have its database open"
        answers = f"its web service answers on port {settings.web.port}"
        raise Conflict(
            f"the appliance is running ({held if busy else answers}): "
            "stop it first (systemctl stop appliance.target)"
        )
    manifest = verify(src)
    root = settings.paths.data_dir
    if settings.paths.database.exists() and not replace:
        raise Conflict(f"{settings.paths.database} exists: pass --replace to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=root))
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            for name, expected in manifest["files"].items():
                out = staging / name
                out.parent.mkdir(parents=True, exist_ok=True)
                source = _Hashing(tar.extractfile(tar.getmember(name)))
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle, CHUNK)
                # Checked again as written: the archive may have changed since verify().
                if source.digest.hexdigest() != expected["sha256"]:
                    raise InvalidInput(f"{src}: {name} does not match its checksum")
        tables = check_database(staging / "appliance.db")
        if tables != manifest["tables"]:
            raise InvalidInput(f"{src}: the database's rows differ from the manifest")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.paths.database}{suffix}").unlink(missing_ok=True)
        for directory in (settings.paths.files, settings.paths.secrets):
            if directory.exists():
                shutil.rmtree(directory)
        for item in staging.iterdir():
            os.replace(item, root / item.name)
        if settings.paths.secrets.exists():
            os.chmod(settings.paths.secrets, 0o700)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def created_at(path: Path) -> datetime:
    """When a backup was taken: from its name, else its modification time."""
    match = NAME.search(path.name)
    if match:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def prune(settings: Settings, directory: Path, now: datetime) -> list[Path]:
    """Delete backups in ``directory`` older than the erase window; returns what went.

    An account erased today may still be in a backup taken yesterday; once that backup is
    older than ``privacy.erase_window_days`` it must be gone, so run this daily (see
    docs/operations.md).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"{directory} is not a directory")
    cutoff = now - timedelta(days=settings.privacy.erase_window_days)
    removed = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        if created_at(path) < cutoff:
            path.unlink()
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
            removed.append(path)
    return removed
