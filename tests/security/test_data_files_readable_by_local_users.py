"""Audit 2026-12, finding 7: ``appliance.db`` and ``queue.db`` (which holds pending
sign-in codes) were 0644 in a 0755 data dir, readable by every local user.

Every service and command now runs with umask 0077, so what they create is 0600 (0700 for
directories; SQLite's -wal and -shm files take the database's mode); ``appliance init``,
which the installer runs on every upgrade, makes an older data dir private; ``appliance
doctor`` names what is not."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import (
    free_port,
    run_appliance,
    service_env,
    start_service,
    stop_process,
    wait_until,
)

from appliance import mail
from appliance.accounts import service as accounts
from appliance.permissions import loose_paths

#: What the test harness itself writes into the data dir (the services' output).
HARNESS_LOG = re.compile(r"(web|worker|inference)-\d+\.log")


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/PID/status")


def run_cli(*args: str, settings) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--data-dir", str(settings.paths.data_dir)],
        capture_output=True,
        text=True,
        env=service_env(settings),
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),  # an ordinary login shell's umask
    )


@pytest.fixture
def services(settings, db, clock):
    """Web and worker started from a parent whose umask is 0022, as a shell's would be."""
    accounts.create_user(db, "owner@example.com", clock(), account_name="Acme")
    previous = os.umask(0o022)
    try:
        worker = run_appliance(settings, "worker")
        port = free_port()
        web = start_service(["web", "--port", str(port)], settings, f"http://127.0.0.1:{port}")
    finally:
        os.umask(previous)
    yield web, worker
    web.stop()
    stop_process(worker)


def test_every_service_runs_with_a_private_umask(services, inference_service):
    web, worker = services
    for pid in (web.process.pid, worker.pid, inference_service.process.pid):
        assert umask_of(pid) == 0o077, f"umask {umask_of(pid):04o} in pid {pid}"


def test_what_the_services_write_is_private(services, settings):
    web, _ = services
    # Web and worker write: a sign-in code goes through queue.db to the outbox.
    assert (
        httpx.post(web.url + "/api/auth/code", json={"email": "owner@example.com"}).status_code
        == 202
    )
    wait_until(lambda: mail.outbox_messages(settings), timeout=30, what="the code's mail")
    data_dir = settings.paths.data_dir
    written = {p.name for p in data_dir.iterdir()}
    assert {"appliance.db", "queue.db", "outbox", "secrets"} <= written
    loose = [
        (str(path.relative_to(data_dir)), f"{mode:04o}")
        for path, mode in loose_paths(data_dir)
        if not HARNESS_LOG.fullmatch(path.name)
    ]
    assert loose == []


def test_an_old_install_is_made_private_on_upgrade_and_doctor_flags_it(settings):
    data_dir = settings.paths.data_dir
    (data_dir / "queue.db").write_bytes(b"")
    for path in [data_dir, *data_dir.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)

    flagged = run_cli("doctor", settings=settings)
    assert re.search(r"FAIL\s+permissions\s+readable by other users: \S*data \d+", flagged.stdout)
    assert flagged.returncode == 1

    assert run_cli("init", settings=settings).returncode == 0
    assert loose_paths(data_dir) == []
    assert stat.S_IMODE((data_dir / "queue.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    healthy = run_cli("doctor", settings=settings)
    assert re.search(r"ok\s+permissions", healthy.stdout), healthy.stdout
