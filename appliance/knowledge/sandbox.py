"""The sandboxed extraction worker: a child interpreter started once and reused.

Formats whose parsers a hostile file could drive to exhaust memory or time (HTML, CSV,
JSON, DOCX, PDF) are read in a child process, ``python -I -m appliance.knowledge.sandbox``,
with an address-space limit (``RLIMIT_AS``) and no core dumps. The child stays up and
reads one document after another: each job is a line of JSON on its stdin, each answer
a length-prefixed JSON object on its stdout (the parent caps how much it reads). Every
job gets its own CPU budget (``RLIMIT_CPU`` raised to what the child used so far plus the
job's seconds; past it the kernel ends the child) and a wall-clock deadline in the parent.

The parent kills and replaces the child after a timeout, an answer that is too large, a
memory error, a crash or ``MAX_JOBS`` documents. A document whose child died under it
(killed from outside, say) is tried once more on a fresh child; twice is a crash. One
child per thread of the parent (``Sandbox.for_thread``), stopped with its thread.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import resource
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from appliance.knowledge.readers import MAX_SECTIONS, MAX_TEXT_BYTES, read

log = logging.getLogger(__name__)

#: Documents one child reads before it is replaced (a parser's leaks stay bounded).
MAX_JOBS = 200
#: JSON escaping at most doubles the (control-character-free) text; plus per-section overhead.
MAX_ANSWER_BYTES = 2 * MAX_TEXT_BYTES + 64 * MAX_SECTIONS
_HEADER = struct.Struct(">Q")
_MODULE = "appliance.knowledge.sandbox"
_local = threading.local()
_all: weakref.WeakSet[Sandbox] = weakref.WeakSet()  # stopped at exit


class Sandbox:
    """One reusable child process and the jobs sent to it."""

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self.jobs = 0

    @classmethod
    def for_thread(cls, memory_mb: int) -> Sandbox:
        """This thread's sandbox (a new one when the memory limit changed)."""
        sandbox = getattr(_local, "sandbox", None)
        if sandbox is None or sandbox.memory_mb != memory_mb:
            if sandbox is not None:
                sandbox.stop()
            sandbox = _local.sandbox = cls(memory_mb)
            _all.add(sandbox)
        return sandbox

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def extract(self, kind: str, path: Path, timeout: float) -> dict:
        """The child's answer for one document: ``{"ok": True, "sections", "pages"}`` or
        ``{"ok": False, "error": reason}``."""
        for attempt in (1, 2):
            answer = self._once(kind, path, timeout)
            if answer is not None:
                return answer
            log.warning("the extraction worker died under a %s (attempt %d)", kind, attempt)
        return {"ok": False, "error": "crashed"}

    def __del__(self) -> None:  # its thread ended
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _start(self) -> subprocess.Popen:
        self.stop()
        self.jobs = 0
        self.proc = subprocess.Popen(
            # -I: ignore PYTHON* variables, user site-packages and the working directory
            [sys.executable, "-I", "-m", _MODULE, str(self.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # tracebacks could quote document text
            env={"PATH": os.defpath},  # the parser needs none of the service's settings
            close_fds=True,
        )
        return self.proc

    def _once(self, kind: str, path: Path, timeout: float) -> dict | None:
        """The answer, or None when the child died without one (try again)."""
        proc = self.proc
        if proc is None or proc.poll() is not None or self.jobs >= MAX_JOBS:
            proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        job = {"kind": kind, "path": str(path), "cpu_seconds": max(1, math.ceil(timeout))}
        try:
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            proc.stdin.flush()
        except OSError:  # the child is gone
            self.stop()
            return None
        self.jobs += 1
        outcome, data = _read_answer(proc.stdout.fileno(), deadline)
        if outcome == "eof":
            returncode = proc.wait()
            self.stop()
            if returncode == -signal.SIGXCPU:
                return {"ok": False, "error": "timeout"}
            return None
        if outcome != "done":
            self.stop()
            log.info("extraction of a %s stopped: %s", kind, outcome)
            return {"ok": False, "error": outcome}
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self.stop()
            return {"ok": False, "error": "crashed"}
        if answer.get("error") == "memory":
            self.stop()  # its heap may be in any state: start clean
        return answer


def _read_answer(fd: int, deadline: float) -> tuple[str, bytes]:
    """(``done`` | ``eof`` | ``timeout`` | ``too_much_text``, the answer's bytes)."""
    buffer = bytearray()
    wanted = _HEADER.size
    length = None
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(buffer) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", b""
            if not selector.select(left):
                continue
            chunk = os.read(fd, min(1 << 20, wanted - len(buffer)))
            if not chunk:
                return "eof", b""
            buffer += chunk
            if length is None and len(buffer) >= _HEADER.size:
                (length,) = _HEADER.unpack(buffer[: _HEADER.size])
                if length > MAX_ANSWER_BYTES:
                    return "too_much_text", b""
                wanted = _HEADER.size + length
    return "done", bytes(buffer[_HEADER.size :])


@atexit.register
def _stop_all() -> None:
    for sandbox in list(_all):
        sandbox.stop()


# --- the child --------------------------------------------------------------------------


def _child_main(argv: list[str]) -> None:
    memory_mb = int(argv[0])
    # Answers go to the original stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.dont_write_bytecode = True
    _limit_memory(memory_mb)
    for line in sys.stdin.buffer:
        job = json.loads(line)
        _limit_cpu(int(job["cpu_seconds"]))
        answer = _answer(job["kind"], Path(job["path"]))
        out.write(_HEADER.pack(len(answer)) + answer)
        out.flush()


def _answer(kind: str, path: Path) -> bytes:
    reserve = bytearray(1 << 20)  # freed on MemoryError, so the answer can still be sent
    try:
        return json.dumps(read(kind, path), ensure_ascii=False).encode("utf-8")
    except MemoryError:
        del reserve
        return b'{"ok": false, "error": "memory"}'
    except Exception:  # a parser's exception on hostile input: report, never show it
        return b'{"ok": false, "error": "malformed"}'


def _limit_memory(memory_mb: int) -> None:
    """Address space and core dumps capped, below any hard limit already set."""
    memory = memory_mb * 1024 * 1024
    for which, limit in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0)):
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(which, (limit, limit))


def _limit_cpu(seconds: int) -> None:
    """SIGXCPU (which ends the child) once this job has used ``seconds`` of CPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
