"""Helpers every benchmark in scripts/bench/ shares: tables, how busy the machine is, and
what it is (imported as ``common`` with scripts/bench/ on ``sys.path``)."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Other processes' share of the CPUs above which a run is flagged noisy.
NOISY_SHARE = 0.05


def text_table(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (all CPUs; steal counts as busy)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds``, as a fraction (this process is idle meanwhile)."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - before) / (seconds * (os.cpu_count() or 1))


def wait_until_idle(limit: float, threshold: float = 0.15) -> float:
    """Wait up to ``limit`` seconds for other processes to use under ``threshold`` of the
    CPUs (llama.cpp's threads spin on barriers: a busy neighbour slows them many times);
    returns the last share measured."""
    deadline = time.monotonic() + limit
    busy = busy_fraction(1.0)
    while busy > threshold and time.monotonic() < deadline:
        print(f"  machine {busy:.0%} busy; waiting for it to calm down")
        busy = busy_fraction(5.0)
    return busy


def flag_noise(notes: list[str], busy_before: float, others_share: float) -> None:
    """Warn (and put the warning first in ``notes``) when other processes used more than
    ``NOISY_SHARE`` of the CPUs just before or during the run."""
    if max(busy_before, others_share) > NOISY_SHARE:
        warning = (
            f"Other processes used {others_share:.0%} of the CPUs during this run "
            f"({busy_before:.0%} just before it): these numbers are noisier than usual."
        )
        print(f"\nwarning: {warning}")
        notes.insert(0, f"**{warning}**")


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The checkout's commit, and whether it has local changes (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes" if dirty else "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """A running ``python -m appliance ...`` child (inference or web)."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
