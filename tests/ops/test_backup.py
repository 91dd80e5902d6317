"""Backups: taken while another process writes, restored complete and consistent;
tampered archives refused; running installs refused; expired backups pruned."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import make_settings, service_env, wait_until

from appliance.cli import initialise, main
from appliance.db import open_db
from appliance.errors import Conflict, InvalidInput
from appliance.ops import backup

WRITER = textwrap.dedent(
    """
    import sys
    import time
    from datetime import UTC, datetime
    from appliance.accounts import service as accounts
    from appliance.config import Settings
    from appliance.db import open_db

    db = open_db(Settings.load())
    log = open(sys.argv[1], "a", buffering=1)
    deadline = time.monotonic() + float(sys.argv[2])
    i = 0
    while time.monotonic() < deadline:
        i += 1
        account = accounts.create_account(db, f"load-{i:05d}", datetime.now(UTC))
        log.write(account.id + "\\n")  # written only after the commit
    """
)


def committed(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_backup_during_writes_restores_every_committed_row(settings, tmp_path):
    (settings.paths.files / "acc_x").mkdir(parents=True)
    (settings.paths.files / "acc_x" / "doc.bin").write_bytes(b"\x00original bytes" * 1000)
    log = tmp_path / "committed.txt"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(log), "60"],
        env=service_env(settings),
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(committed(log)) >= 200, timeout=60, what="200 committed rows")
        before = set(committed(log))
        result = subprocess.run(
            [sys.executable, "-m", "appliance", "backup", str(tmp_path / "backups")],
            env=service_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        still_writing = writer.poll() is None
    finally:
        writer.kill()
        writer.wait()
    assert still_writing, "the write load ended before the backup did: not a test under load"
    archive = next((tmp_path / "backups").glob("appliance-backup-*.tar.gz"))
    assert archive.stat().st_mode & 0o077 == 0

    target = make_settings(tmp_path / "restored")
    assert main(["restore", str(archive), "--data-dir", str(target.paths.data_dir)]) == 0
    db = open_db(target)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        restored = {
            row[0] for row in db.execute("select id from accounts where name like 'load-%'")
        }
    finally:
        db.close()
    # Every row committed before the backup began is there, and only committed rows are:
    # the snapshot is a prefix of the commit order.
    order = committed(log)
    assert before <= restored
    assert restored == set(order[: len(restored)])
    assert (target.paths.files / "acc_x" / "doc.bin").read_bytes() == (b"\x00original bytes" * 1000)
    assert (target.paths.secrets / "session_key").read_text() == (
        settings.paths.secrets / "session_key"
    ).read_text()


def rewrite(archive: Path, out: Path, change, extra=None) -> None:
    """Copy ``archive`` member by member, letting ``change(name, data)`` alter contents
    (None drops the member) and ``extra(tar)`` add members."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        if extra:
            extra(dst)
        for member in src.getmembers():
            data = change(member.name, src.extractfile(member).read())
            if data is None:
                continue
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))


@pytest.fixture
def archive(settings, db, tmp_path, clock) -> Path:
    from appliance.accounts import service as accounts

    accounts.create_account(db, "kept", clock())
    return backup.backup(settings, tmp_path / "b", clock()).path


def test_tampered_archives_are_refused_and_change_nothing(archive, tmp_path):
    target = make_settings(tmp_path / "target")

    def edit_database(name, data):
        if name != "appliance.db":
            return data
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        return bytes(data)

    def drop_secrets(name, data):
        return None if name.startswith("secrets/") else data

    def escape(tar: tarfile.TarFile) -> None:
        evil = tarfile.TarInfo("../escape.txt")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))

    cases = {
        "edited-database": (edit_database, None),
        "missing-files": (drop_secrets, None),
        "path-escape": (lambda name, data: data, escape),
    }
    for label, (change, extra) in cases.items():
        bad = tmp_path / f"{label}.tar.gz"
        rewrite(archive, bad, change, extra)
        with pytest.raises(InvalidInput):
            backup.restore(target, bad)
        assert not target.paths.database.exists(), label
        assert not (tmp_path / "escape.txt").exists()

    # A corrupted archive whose .sha256 no longer matches.
    copy = tmp_path / "copy" / archive.name
    copy.parent.mkdir()
    data = bytearray(archive.read_bytes())
    data[-40] ^= 0x01
    copy.write_bytes(bytes(data))
    (copy.parent / (archive.name + ".sha256")).write_text(
        (archive.parent / (archive.name + ".sha256")).read_text()
    )
    with pytest.raises(InvalidInput, match="checksum"):
        backup.restore(target, copy)
    assert not target.paths.database.exists()
    # The untouched archive restores.
    backup.restore(target, archive)
    assert target.paths.database.exists()


def test_restore_refuses_a_running_install_and_an_existing_database(archive, tmp_path):
    target = make_settings(tmp_path / "running")
    initialise(target)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('select count(*) from accounts').fetchone(); print('open', flush=True); "
            "time.sleep(60)",
            str(target.paths.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(Conflict, match="is running"):
            backup.restore(target, archive, replace=True)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(Conflict, match="--replace"):
        backup.restore(target, archive)
    backup.restore(target, archive, replace=True)
    db = open_db(target)
    try:
        assert db.execute("select count(*) from accounts where name = 'kept'").fetchone()[0] == 1
    finally:
        db.close()


def test_prune_removes_backups_older_than_the_erase_window(settings, db, tmp_path, clock):
    window = settings.privacy.erase_window_days
    directory = tmp_path / "backups"
    old = backup.backup(settings, directory, clock() - timedelta(days=window, minutes=1)).path
    fresh = backup.backup(settings, directory, clock() - timedelta(days=window - 1)).path
    other = directory / "notes.txt"
    other.write_text("not a backup")
    removed = backup.prune(settings, directory, clock())
    assert removed == [old]
    assert not old.exists() and not Path(f"{old}.sha256").exists()
    assert fresh.exists() and other.exists()


def test_manifest_lists_checksums_and_leaves_out_transient_data(settings, db, tmp_path, clock):
    (settings.paths.outbox / "code.eml").write_text("Your code is 123456")
    (settings.paths.secrets / "setup_token").write_text("one-time")
    path = backup.backup(settings, tmp_path, clock()).path
    manifest = backup.verify(path)
    names = set(manifest["files"])
    assert "appliance.db" in names and "secrets/session_key" in names
    assert not any(n.startswith(("outbox/", "models/")) for n in names)
    assert "secrets/setup_token" not in names and "queue.db" not in names
    assert manifest["tables"]["accounts"] >= 0
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert json.loads(json.dumps(manifest)) == manifest


def test_restore_refuses_while_the_web_service_answers(archive, live_web, settings):
    live = settings.replace(**{"web.port": int(live_web.url.rsplit(":", 1)[1])})
    assert backup.web_answers(live)
    with pytest.raises(Conflict, match="is running"):
        backup.restore(live, archive, replace=True)
    live_web.stop()
    assert not backup.web_answers(live)
