"""The supervisor behind ``appliance up``, with real child processes that really die: the
restart backoff, its reset after a healthy run, giving up on a child that keeps dying,
the log line per death, and the state file that doctor and the admin page read.
(tests/test_up.py and tests/ops/test_crash_inference.py run the real ``appliance up``.)"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import signal
import stat
import sys
import threading

import psutil
import pytest
from conftest import wait_until

from appliance.ops import services
from appliance.supervisor import RestartPolicy, supervise

# Dies by SIGSEGV at once (no core file), after noting when it started.
CRASHER = """
import os, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
with open(sys.argv[1], "a") as f:
    f.write(f"{time.monotonic()}\\n")
os.kill(os.getpid(), signal.SIGSEGV)
"""
# Lives ``argv[2]`` seconds, then exits with code 3.
SHORT_LIVED = """
import sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{time.monotonic()}\\n")
time.sleep(float(sys.argv[2]))
sys.exit(3)
"""
# Runs until stopped (SIGINT), with a grandchild in its process group.
SLEEPER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("sleeper up", flush=True)
time.sleep(60)
"""


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def starts(path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def stop_when(condition, timeout: float = 30) -> threading.Thread:
    """SIGTERM to this process (``up``'s stop) once ``condition`` holds."""

    def watch():
        wait_until(condition, timeout=timeout, interval=0.05, what="the supervisor")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def died_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "appliance.supervisor"]


def test_a_child_that_keeps_dying_is_restarted_with_backoff_then_everything_stops(tmp_path, caplog):
    marks = tmp_path / "crasher.starts"
    state = tmp_path / "run" / services.STATE_FILE
    out = io.StringIO()
    policy = RestartPolicy(first_delay=0.1, max_delay=0.4, max_deaths=5, window=60)
    caplog.set_level(logging.WARNING, logger="appliance.supervisor")
    code = supervise(
        [("sleeper", python(SLEEPER)), ("crasher", python(CRASHER, str(marks)))],
        out=out,
        state_file=state,
        policy=policy,
    )
    assert code == 1
    assert (
        "up       | crasher keeps dying: 5 times in 1 minute (last: signal SIGSEGV); "
        "stopped the other services" in out.getvalue()
    )
    assert "sleeper  | sleeper up" in out.getvalue()

    # Five starts, each after at least the doubling delay (capped), never sooner.
    times = starts(marks)
    assert len(times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, delay in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert gap >= delay, gaps

    # One line per death: which service, how it died, restarts so far, the next delay.
    records = died_records(caplog)
    fields = [r.fields for r in records]
    assert [f["service"] for f in fields] == ["crasher"] * 5
    assert [f["signal"] for f in fields] == ["SIGSEGV"] * 5
    assert [f["exit_code"] for f in fields] == [None] * 5
    assert [f["restarts"] for f in fields] == [0, 1, 2, 3, 4]
    assert [f.get("next_delay_s") for f in fields] == [0.1, 0.2, 0.4, 0.4, None]
    assert [r.levelname for r in records] == ["WARNING"] * 4 + ["ERROR"]
    assert records[0].getMessage() == (
        "crasher died (signal SIGSEGV); restarting it in 0.1 s (restart 1)"
    )

    # The state file: the crasher gave up after 4 restarts; the sleeper was stopped.
    recorded = json.loads(state.read_text())
    assert recorded["pid"] == os.getpid()
    assert recorded["services"]["crasher"]["state"] == "failed"
    assert recorded["services"]["crasher"]["restarts"] == 4
    assert recorded["services"]["crasher"]["last_exit"] == "signal SIGSEGV"
    assert recorded["services"]["sleeper"]["state"] == "stopped"
    assert recorded["services"]["sleeper"]["restarts"] == 0
    assert not stat.S_IMODE(state.stat().st_mode) & 0o022
    assert [p.name for p in state.parent.iterdir()] == [services.STATE_FILE]  # no leftovers


def test_a_child_that_lived_long_enough_starts_over_at_the_first_delay(tmp_path, caplog):
    marks = tmp_path / "short.starts"
    # Each run lives 0.4 s (healthy after 0.3 s): the delay never grows, and no two
    # deaths fall within the 0.35 s window, so the supervisor never gives up.
    policy = RestartPolicy(
        first_delay=0.1, max_delay=5, healthy_after=0.3, max_deaths=2, window=0.35
    )
    caplog.set_level(logging.WARNING, logger="appliance.supervisor")
    stopper = stop_when(lambda: len(starts(marks)) >= 4)
    code = supervise(
        [("short", python(SHORT_LIVED, str(marks), "0.4"))],
        out=io.StringIO(),
        state_file=tmp_path / "run" / services.STATE_FILE,
        policy=policy,
    )
    stopper.join(5)
    assert code == 0  # stopped by SIGTERM, not given up
    fields = [r.fields for r in died_records(caplog)]
    assert len(fields) >= 3
    assert {f["exit_code"] for f in fields} == {3}
    assert {f["next_delay_s"] for f in fields} == {0.1}


def test_the_state_file_while_running_and_after_ctrl_c(tmp_path, settings):
    """What doctor, ``admin status`` and /admin read (``services.service_states``)."""
    marks = tmp_path / "short.starts"
    seen = {}
    out = io.StringIO()

    def restarted_once() -> bool:
        found = services.service_states(settings)
        if found is None or found.source != "up":
            return False
        short = next(s for s in found.services if s.name == "short")
        if short.restarts >= 1 and short.state == "running":
            seen["while running"] = found
            return True
        return False

    stopper = stop_when(restarted_once)
    code = supervise(
        [
            ("short", python(SHORT_LIVED, str(marks), "0.2")),
            ("sleeper", python(SLEEPER)),
        ],
        out=out,
        state_file=services.state_path(settings),
        policy=RestartPolicy(first_delay=0.1, max_deaths=100),
    )
    stopper.join(5)
    assert code == 0
    running = seen["while running"]
    assert running.running is True  # this process is the supervisor, alive
    short = next(s for s in running.services if s.name == "short")
    assert short.last_exit == "exit code 3" and short.last_exit_at
    assert services.summary(running)[0].startswith("short: running, 1 restart")

    after = services.service_states(settings)
    assert {s.name: s.state for s in after.services} == {"short": "stopped", "sleeper": "stopped"}
    # The sleeper's grandchild went with it (SIGINT to its process group).
    grandchild = python("import time; time.sleep(60)")
    wait_until(
        lambda: (
            not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == grandchild]
        ),
        timeout=10,
        what="the grandchild to stop",
    )


def test_a_state_file_left_by_a_dead_supervisor_is_reported_as_not_running(settings):
    services.write_state(
        services.state_path(settings),
        {
            "pid": 2**22 + 1,  # above pid_max's default: no such process
            "updated_at": "2026-11-27T09:00:00+00:00",
            "services": {
                "inference": {
                    "state": "failed",
                    "restarts": 4,
                    "last_exit": "signal SIGSEGV",
                    "last_exit_at": "2026-11-27T08:59:58+00:00",
                }
            },
        },
    )
    found = services.service_states(settings)
    assert found.source == "up" and found.running is False
    assert services.summary(found) == [
        "inference: failed, 4 restarts (last died: signal SIGSEGV at 2026-11-27T08:59:58+00:00)"
    ]


SYSTEMCTL_SHOW = """\
Id=appliance-inference.service
LoadState=loaded
ActiveState=activating
NRestarts=3
ExecMainCode=2
ExecMainStatus=11
ExecMainExitTimestamp=Fri 2026-11-27 09:00:01 UTC
Result=signal

Id=appliance-web.service
LoadState=loaded
ActiveState=active
NRestarts=0
ExecMainCode=0
ExecMainStatus=0
ExecMainExitTimestamp=
Result=success

Id=appliance-worker.service
LoadState=loaded
ActiveState=failed
NRestarts=5
ExecMainCode=1
ExecMainStatus=1
ExecMainExitTimestamp=Fri 2026-11-27 09:02:00 UTC
Result=exit-code
"""


@pytest.fixture
def systemctl(tmp_path, monkeypatch):
    """A ``systemctl`` on PATH that answers like systemd 252 does (systemd itself cannot
    run here); returns the file its arguments are written to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "show.txt").write_text(SYSTEMCTL_SHOW)
    script = bin_dir / "systemctl"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/args.txt\ncat {tmp_path}/show.txt\nexit 0\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_under_systemd_restarts_and_the_last_exit_come_from_systemctl_show(settings, systemctl):
    found = services.service_states(settings)
    args = (systemctl / "args.txt").read_text().split()
    assert args[0] == "show" and "NRestarts" in args[1] and "ExecMainStatus" in args[1]
    assert args[2:] == [f"appliance-{n}.service" for n in ("inference", "web", "worker")]
    assert found.source == "systemd"
    assert services.summary(found) == [
        "inference: activating, 3 restarts (last died: signal SIGSEGV at Fri 2026-11-27 "
        "09:00:01 UTC)",
        "web: active, 0 restarts",
        "worker: failed, 5 restarts (last died: exit code 1 at Fri 2026-11-27 09:02:00 UTC)",
    ]


def test_without_systemd_units_the_state_file_is_read(settings, systemctl):
    (systemctl / "show.txt").write_text(
        "\n\n".join(
            f"Id=appliance-{n}.service\nLoadState=not-found\nActiveState=inactive\nNRestarts=0"
            for n in ("inference", "web", "worker")
        )
    )
    assert services.service_states(settings) is None
    services.write_state(
        services.state_path(settings),
        {"pid": os.getpid(), "updated_at": None, "services": {}},
    )
    assert services.service_states(settings).source == "up"
