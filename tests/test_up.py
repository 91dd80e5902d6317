"""`appliance up`: three children in the foreground, stopped together."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
from conftest import free_port, link_models, service_env, wait_until


@pytest.fixture
def up(settings, models_dir):
    link_models(settings, models_dir)
    web, inference = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "up", "--port", str(web)],
        env=service_env(settings, APPLIANCE_INFERENCE__PORT=str(inference)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def ready():
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=90, what="appliance up to be ready")
        yield process
    finally:
        if process.poll() is None:
            # Ctrl-C: `up` stops its children (a bare kill would leave them running).
            leftovers = children_of(process.pid)
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                for child in [*leftovers, psutil.Process(process.pid)]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                process.wait()


def children_of(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def command(process: psutil.Process) -> str | None:
    """The last word of its command line (None for a zombie: dead, not yet reaped)."""
    try:
        return process.cmdline()[-1]
    except (psutil.ZombieProcess, psutil.NoSuchProcess, IndexError):
        return None


def test_ctrl_c_stops_everything(up):
    children = children_of(up.pid)
    assert len(children) >= 3
    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    output = up.stdout.read()
    assert "setup?token=" in output
    assert "web      |" in output and "worker   |" in output and "inference|" in output


def test_a_dying_child_is_restarted_and_the_restart_is_reported(up, settings):
    children = {p.pid: p for p in children_of(up.pid)}
    worker = next(p for p in children.values() if p.cmdline()[-1:] == ["worker"])
    os.kill(worker.pid, signal.SIGKILL)

    def new_worker():
        assert up.poll() is None
        return next(
            (p for p in children_of(up.pid) if p.pid != worker.pid and command(p) == "worker"),
            None,
        )

    wait_until(new_worker, timeout=30, what="the worker to be restarted")
    status = subprocess.run(
        [sys.executable, "-m", "appliance", "admin", "status"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "worker: running, 1 restart (last died: signal SIGKILL at " in status.stdout
    assert "web: running, 0 restarts" in status.stdout

    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    output = up.stdout.read()
    died = [json.loads(line) for line in output.splitlines() if '"appliance.supervisor"' in line]
    assert [(d["service"], d["signal"], d["restarts"], d["next_delay_s"]) for d in died] == [
        ("worker", "SIGKILL", 0, 1.0)
    ]
    assert died[0]["msg"] == "worker died (signal SIGKILL); restarting it in 1 s (restart 1)"
