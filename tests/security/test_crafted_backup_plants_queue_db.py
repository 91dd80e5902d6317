"""Audit 2026-12, finding 8: ``appliance restore`` wrote any file an archive named, as long
as the archive's own manifest listed it with a matching checksum, so a crafted backup could
plant ``queue.db``, whose task payloads the worker unpickles. Restore now accepts only the
names a backup writes, and checks that and every member's SHA-256 against the manifest
before anything is written."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
from conftest import make_settings

from appliance.cli import main
from appliance.errors import InvalidInput
from appliance.ops import backup


def queue_db(tmp_path: Path) -> bytes:
    """A SQLite file shaped like Huey's queue, with a payload waiting to be unpickled."""
    path = tmp_path / "evil-queue.db"
    conn = sqlite3.connect(path)
    conn.execute("create table task (id integer primary key, queue text, data blob, priority real)")
    conn.execute("insert into task (queue, data, priority) values ('appliance', x'80049500', 0)")
    conn.commit()
    conn.close()
    return path.read_bytes()


def craft(archive: Path, out: Path, planted: dict[str, bytes]) -> Path:
    """The real backup plus ``planted`` members, with a manifest that lists them with
    their true checksums (so every checksum in it matches)."""
    with tarfile.open(archive) as src:
        members = {m.name: src.extractfile(m).read() for m in src.getmembers()}
    manifest = json.loads(members.pop(backup.MANIFEST))
    members.update(planted)
    for name, data in planted.items():
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    members[backup.MANIFEST] = json.dumps(manifest).encode()
    with tarfile.open(out, "w:gz") as dst:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture
def archive(settings, db, tmp_path, clock) -> Path:
    from appliance.accounts import service as accounts

    accounts.create_account(db, "kept", clock())
    (settings.paths.files / "acc_x").mkdir(parents=True)
    (settings.paths.files / "acc_x" / "doc_y").write_bytes(b"an upload")
    return backup.backup(settings, tmp_path / "b", clock()).path


@pytest.mark.parametrize(
    "name",
    [
        "queue.db",
        "outbox/20261201T000000Z-x.eml",
        "secrets/setup_token",
        "models/registry.json",
        "files/acc_x/.upload-tmp",
        "backups/appliance-backup-x.tar.gz",
    ],
)
def test_a_crafted_archive_that_plants_other_files_is_refused_and_nothing_written(
    archive, tmp_path, name
):
    data = queue_db(tmp_path) if name == "queue.db" else b"planted"
    crafted = craft(archive, tmp_path / "crafted.tar.gz", {name: data})
    target = make_settings(tmp_path / "target")
    with pytest.raises(InvalidInput, match="not part of a backup"):
        backup.restore(target, crafted)
    assert not target.paths.data_dir.exists()


def test_the_cli_refuses_it_too_and_the_real_backup_restores(archive, tmp_path, capsys):
    crafted = craft(archive, tmp_path / "crafted.tar.gz", {"queue.db": queue_db(tmp_path)})
    target = tmp_path / "target"
    assert main(["restore", str(crafted), "--data-dir", str(target)]) == 2
    assert "queue.db" in capsys.readouterr().err
    assert not target.exists()
    assert main(["restore", str(archive), "--data-dir", str(target)]) == 0
    assert (target / "files" / "acc_x" / "doc_y").read_bytes() == b"an upload"
    assert not (target / "queue.db").exists()
