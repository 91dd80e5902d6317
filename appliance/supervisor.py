"""``appliance up``: run web, inference and worker as child processes in the foreground.

A child that dies is started again after a delay that doubles from 1 s to 30 s, as the
systemd units do; one that keeps dying stops everything (``RestartPolicy``,
docs/operations.md). Starts and deaths are recorded for ``appliance.ops.services``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.ops.services import describe_exit, write_state

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
POLL_SECONDS = 0.2
COLORS = {"web": "\033[36m", "inference": "\033[35m", "worker": "\033[33m"}


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead child is started again, and when ``up`` gives up.

    systemd/*.service say the same with ``RestartSec`` and ``StartLimitBurst`` /
    ``StartLimitIntervalSec`` (tests/ops/test_systemd_units.py keeps them in step).
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    healthy_after: float = 60.0  # a child that lived this long starts over at first_delay
    max_deaths: int = 5
    window: float = 120.0  # ... within this many seconds: stop everything


@dataclass
class Child:
    name: str
    argv: list[str]
    delay: float
    process: subprocess.Popen | None = None
    started: float = 0.0  # time.monotonic() of the last start
    restart_at: float | None = None
    restarts: int = 0
    deaths: deque[float] = field(default_factory=deque)
    last_exit: str | None = None
    last_exit_at: str | None = None

    @property
    def state(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return "running"
        return "restarting" if self.restart_at is not None else "stopped"


class _Output:
    """The children's lines, prefixed, one writer at a time."""

    def __init__(self, out) -> None:
        self.out = out
        self.color = hasattr(out, "isatty") and out.isatty()
        self.lock = threading.Lock()

    def pump(self, child: Child, process: subprocess.Popen) -> None:
        prefix = f"{child.name:<9}|"
        if self.color:
            prefix = f"{COLORS.get(child.name, '')}{prefix}\033[0m"
        for raw in iter(process.stdout.readline, b""):
            self.write(f"{prefix} {raw.decode('utf-8', errors='replace').rstrip()}")
        process.stdout.close()  # one pipe per start: a restarted child must not leak it

    def write(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()


@dataclass
class Supervisor:
    """The children of one ``up``: started, watched, restarted, recorded, stopped."""

    children: list[Child]
    env: dict[str, str] | None
    output: _Output
    state_file: Path | None
    policy: RestartPolicy
    failed: Child | None = None

    def start(self, child: Child) -> None:
        if child.process is not None:
            child.restarts += 1
        child.restart_at = None
        child.started = time.monotonic()
        child.process = subprocess.Popen(
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            # Own process group: the terminal's Ctrl-C reaches only `up`, which then
            # stops the children in order instead of all at once.
            start_new_session=True,
        )
        threading.Thread(target=self.output.pump, args=(child, child.process), daemon=True).start()
        self.record()

    def check(self, now: float) -> None:
        """Note the children that died, start those whose delay is over; sets ``failed``
        when one died ``max_deaths`` times within ``window``."""
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.start(child)
                continue
            if child.process is None or child.process.poll() is None:
                continue
            self.died(child, now)
            if self.failed:
                return

    def died(self, child: Child, now: float) -> None:
        policy = self.policy
        code = child.process.returncode
        # What the child started and left behind (the extraction sandbox of the worker).
        _signal_group(child.process, signal.SIGKILL)
        if now - child.started >= policy.healthy_after:
            child.delay = policy.first_delay
        child.deaths.append(now)
        while child.deaths and now - child.deaths[0] > policy.window:
            child.deaths.popleft()
        child.last_exit = describe_exit(code)
        child.last_exit_at = _now()
        fields = {
            "service": child.name,
            "exit_code": code if code >= 0 else None,
            "signal": child.last_exit.removeprefix("signal ") if code < 0 else None,
            "restarts": child.restarts,
        }
        if len(child.deaths) >= policy.max_deaths:
            self.failed = child
            self.log(
                logging.ERROR,
                f"{child.name} died ({child.last_exit}), {len(child.deaths)} times in "
                f"{_span(policy.window)}: stopping every service",
                fields,
            )
        else:
            child.restart_at = now + child.delay
            self.log(
                logging.WARNING,
                f"{child.name} died ({child.last_exit}); restarting it in {child.delay:g} s "
                f"(restart {child.restarts + 1})",
                {**fields, "next_delay_s": child.delay},
            )
            child.delay = min(child.delay * 2, policy.max_delay)
        self.record()

    def log(self, level: int, message: str, fields: dict) -> None:
        # Under the output lock: the JSON line is never cut into by a child's line.
        with self.output.lock:
            log.log(level, message, extra={"fields": fields})

    def record(self, stopping: bool = False) -> None:
        if self.state_file is None:
            return
        services = {}
        for child in self.children:
            state = "failed" if child is self.failed else "stopped" if stopping else child.state
            pid = child.process.pid if child.process else None
            exits = {"last_exit": child.last_exit, "last_exit_at": child.last_exit_at}
            services[child.name] = {"state": state, "pid": pid, "restarts": child.restarts, **exits}
        snapshot = {"pid": os.getpid(), "updated_at": _now(), "services": services}
        try:
            write_state(self.state_file, snapshot)
        except OSError as exc:  # a full disk must not take the services down
            log.warning("could not record the services' state: %s", exc.strerror)

    def stop_all(self) -> None:
        running = [c.process for c in self.children if c.state == "running"]
        for child in self.children:
            child.restart_at = None
        for process in running:
            # SIGINT is the clean stop for all three (Huey finishes running tasks on it).
            _signal_group(process, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(remaining)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def supervise(
    services: Sequence[tuple[str, list[str]]],
    *,
    env: dict[str, str] | None = None,
    out=None,
    started=None,
    state_file: Path | None = None,
    policy: RestartPolicy | None = None,
) -> int:
    """Start ``services`` (name, argv), keep them running; returns the exit code for ``up``.

    Args:
        started: optional callback run once every child has been started.
        state_file: where to record starts and deaths (``ops.services.state_path``).
    """
    policy = policy or RestartPolicy()
    children = [Child(name, list(argv), policy.first_delay) for name, argv in services]
    supervisor = Supervisor(children, env, _Output(out or sys.stdout), state_file, policy)
    stop_requested = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop_requested.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        for child in supervisor.children:
            supervisor.start(child)
        if started:
            started()
        while not stop_requested.is_set() and supervisor.failed is None:
            supervisor.check(time.monotonic())
            stop_requested.wait(POLL_SECONDS)
        supervisor.stop_all()
        failed = supervisor.failed
        if failed is not None:
            supervisor.output.write(
                f"up       | {failed.name} keeps dying: {len(failed.deaths)} times in "
                f"{_span(supervisor.policy.window)} (last: {failed.last_exit}); "
                f"stopped the other services"
            )
            return 1
        return 0
    finally:
        supervisor.stop_all()
        supervisor.record(stopping=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _span(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    return f"{seconds:g} s"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
