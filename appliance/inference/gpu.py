"""GPU memory as the NVIDIA driver reports it (``nvidia-smi``), for /healthz and the
operator page. Cached briefly: /readyz polls /healthz, and nvidia-smi takes ~50 ms."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from typing import Any

CACHE_SECONDS = 10.0
QUERY = "--query-gpu=index,name,memory.used,memory.total,utilization.gpu"

_lock = threading.Lock()
_cached: tuple[float, list[dict[str, Any]] | None] = (0.0, None)


def parse(output: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in output.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 5:
            continue
        index, name, used, total, busy = parts
        try:
            gpus.append(
                {
                    "index": int(index),
                    "name": name,
                    "memory_used_mb": int(float(used)),
                    "memory_total_mb": int(float(total)),
                    "utilization_percent": _number(busy),
                }
            )
        except ValueError:
            continue  # "[N/A]" where a driver cannot tell
    return gpus


def _number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def memory() -> list[dict[str, Any]] | None:
    """One entry per GPU, or None when there is no NVIDIA driver (a CPU box)."""
    global _cached
    with _lock:
        at, value = _cached
        if time.monotonic() - at < CACHE_SECONDS and at:
            return value
        value = _query()
        _cached = (time.monotonic(), value)
        return value


def _query() -> list[dict[str, Any]] | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        result = subprocess.run(
            [binary, QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse(result.stdout) if result.returncode == 0 else None
