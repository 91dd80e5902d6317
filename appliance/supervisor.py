"""``appliance up``: run web, inference and worker as child processes in the foreground.

Each child's output is prefixed with its name. Ctrl-C (or SIGTERM) stops all of them;
if one dies on its own, the others are stopped and ``up`` exits non-zero naming it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

STOP_TIMEOUT = 10.0
COLORS = {"web": "\033[36m", "inference": "\033[35m", "worker": "\033[33m"}


@dataclass
class Child:
    name: str
    process: subprocess.Popen


def _pump(child: Child, out, color: bool, lock: threading.Lock) -> None:
    prefix = f"{child.name:<9}|"
    if color:
        prefix = f"{COLORS.get(child.name, '')}{prefix}\033[0m"
    for raw in iter(child.process.stdout.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        with lock:
            out.write(f"{prefix} {line}\n")
            out.flush()


def supervise(
    services: Sequence[tuple[str, list[str]]],
    *,
    env: dict[str, str] | None = None,
    out=None,
    started=None,
) -> int:
    """Start ``services`` (name, argv) and wait; returns the exit code for ``up``.

    Args:
        started: optional callback run once every child has been started.
    """
    out = out or sys.stdout
    color = hasattr(out, "isatty") and out.isatty()
    lock = threading.Lock()
    children: list[Child] = []
    stop_requested = threading.Event()
    previous = {}

    def request_stop(signum, frame) -> None:
        stop_requested.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, request_stop)
    try:
        for name, argv in services:
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Own process group: the terminal's Ctrl-C reaches only `up`, which then
                # stops the children in order instead of all at once.
                start_new_session=True,
            )
            child = Child(name, process)
            children.append(child)
            threading.Thread(target=_pump, args=(child, out, color, lock), daemon=True).start()
        if started:
            started()
        failed: Child | None = None
        while not stop_requested.is_set():
            for child in children:
                if child.process.poll() is not None:
                    failed = child
                    break
            if failed:
                break
            stop_requested.wait(0.2)
        _stop_all(children)
        if failed is not None:
            with lock:
                out.write(
                    f"up       | {failed.name} exited with code {failed.process.returncode}; "
                    f"stopped the other services\n"
                )
                out.flush()
            return 1
        return 0
    finally:
        _stop_all(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_all(children: list[Child]) -> None:
    alive = [c for c in children if c.process.poll() is None]
    for child in alive:
        # SIGINT is the clean stop for all three (Huey finishes running tasks on it).
        _signal_group(child.process, signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in alive:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
