"""`appliance up`: three children in the foreground, stopped together."""

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
            process.kill()
            process.wait()


def children_of(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


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


def test_a_dying_child_stops_the_others(up):
    children = {p.pid: p for p in children_of(up.pid)}
    worker = next(p for p in children.values() if p.cmdline()[-1:] == ["worker"])
    os.kill(worker.pid, signal.SIGKILL)
    assert up.wait(30) == 1
    output = up.stdout.read()
    assert "worker exited with code -9; stopped the other services" in output
    _gone, alive = psutil.wait_procs(list(children.values()), timeout=10)
    assert alive == []
