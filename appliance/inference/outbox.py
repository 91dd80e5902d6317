"""Hands the batched engine's streamed text to the requests' event loops off its thread.

Waking an event loop from another thread is a write to its self-pipe, a system call
that releases the GIL: the loop's thread wakes and takes the GIL, and the engine's
thread, which needs it back at once to go on with its step, waits until the loop's
thread lets go and the OS schedules it again. Measured on 2 shared cores: 4-6 ms per
token of one stream, a tenth of its decode step, spent waiting for the GIL inside
``Job.emit``. ``Outbox`` moves those wake-ups to a thread of their own: the engine
queues a step's events and signals that thread (a lock operation, no system call with
the GIL released), then goes on into ``llama_decode``, which releases the GIL for the
whole evaluation; the loop is woken meanwhile, once per step for all its requests.

Order per request is kept: ``drain`` delivers whatever is queued from the calling
thread before the scheduler emits a request's last events itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from typing import Any

from appliance.inference.scheduler import Job


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, event in items:
        job.events.put_nowait(event)


class Outbox:
    """Events queued by the engine's thread, delivered by one thread of its own."""

    def __init__(self, name: str = "chat-events") -> None:
        self._items: list[tuple[Job, Any]] = []
        self._lock = threading.Lock()  # held while a batch is taken and handed over
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, job: Job, event: Any) -> None:
        self._items.append((job, event))

    def flush(self) -> None:
        """Let the delivering thread hand over what is queued (does not wait)."""
        if self._items:
            self._wake.set()

    def close(self) -> None:
        self.drain()
        self._closed = True
        self._wake.set()
        self._thread.join(5)

    def drain(self) -> None:
        """Hand over what is queued from this thread, after anything already taken."""
        with self._lock:
            items, self._items = self._items, []
            by_loop: dict[Any, list[tuple[Job, Any]]] = defaultdict(list)
            for job, event in items:
                by_loop[job.loop].append((job, event))
            for loop, batch in by_loop.items():
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, batch)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self.drain()
