"""A bounded, fair queue in front of the engine.

Requests wait in one FIFO per account; the worker thread serves accounts round-robin, so
one account's burst cannot starve another's single question. ``interactive`` requests go
before ``batch`` ones (document ingestion). The queue is bounded in total and per account;
a request beyond its account's share waits in that account's own line, outside the fair
queue, up to ``account_wait`` seconds for one of the account's places before it is
refused (429), so a burst is answered later rather than refused and other accounts see
the same queue as before.
A running request is never interrupted by a new one; a cancelled one (client gone) is
dropped from the queue or stopped at its next token, and frees its place at once.

The worker runs a ``BatchRunner`` that holds up to ``slots`` jobs and advances all of
them one step at a time (continuous batching), taking jobs from the round-robin as it has
free slots. A function from a job to an iterator of events is run as a one-slot runner
(``OneAtATime``). The server only sees ``submit``, ``cancel`` and events.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from appliance.errors import ApplianceError, Throttled, Unavailable

log = logging.getLogger(__name__)

PRIORITIES = ("interactive", "batch")
_ids = itertools.count(1)


class AccountBusy(Throttled):
    """The account already has as many requests in flight as it may (429)."""


@dataclass(frozen=True)
class Failed:
    """The job failed; ``message`` is safe to show to the caller. A 429 or 503 is a
    refusal: the caller may try again after ``retry_after`` seconds."""

    message: str
    status: int = 500
    retry_after: int | None = None


@dataclass(eq=False)
class Job:
    """One request: what to run, and where its events go."""

    account: str
    payload: Any
    loop: asyncio.AbstractEventLoop
    priority: str = "interactive"
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_ids))

    def emit(self, event: Any) -> None:
        """Hand an event to the waiting request (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


#: Marks the end of a job's events.
DONE = object()


def _shutting_down() -> Unavailable:
    return Unavailable("The inference service is shutting down.", 5)


def _settle(admitted: asyncio.Future, error: BaseException | None) -> None:
    """Wake a held request (on its event loop): queued, or refused with ``error``."""
    if admitted.done():  # it gave up waiting (timeout, client gone)
        return
    if error is None:
        admitted.set_result(None)
    else:
        admitted.set_exception(error)


@runtime_checkable
class BatchRunner(Protocol):
    """Runs several jobs at once, one step at a time, on the scheduler's thread."""

    #: Jobs it can hold at once.
    slots: int

    def admit(self, job: Job) -> None:
        """Take ``job`` into a free slot; raise ``ApplianceError`` to refuse it (400)."""

    def step(self) -> list[tuple[Job, Any]]:
        """Advance every held job (emitting its events); return the jobs that ended.

        Each ended job comes with its last event: a ``Finish`` or a ``Failed``. A job whose
        ``cancelled`` flag is set must end (and free its slot) in the next step.
        """

    def reset(self) -> None:
        """Forget every held job and free their slots (after ``step`` raised)."""


class OneAtATime:
    """A function from a job to its events as a one-slot ``BatchRunner``: a step runs the
    job to its end; an ``ApplianceError`` fails it with a 400, anything else with a 500."""

    slots = 1

    def __init__(self, name: str, run: Callable[[Job], Iterator[Any]]) -> None:
        self.name, self.run = name, run
        self.job: Job | None = None

    def admit(self, job: Job) -> None:
        self.job = job

    def step(self) -> list[tuple[Job, Any]]:
        job, self.job = self.job, None
        assert job is not None
        last = None
        try:
            for event in self.run(job):
                if last is not None:
                    job.emit(last)
                last = event
        except Exception as exc:
            if last is not None:
                job.emit(last)
            if isinstance(exc, ApplianceError):
                last = Failed(str(exc), 400)
            else:
                log.exception("%s request failed", self.name)
                last = Failed("The model failed to answer this request.")
        return [(job, last)]

    def reset(self) -> None:
        self.job = None


@dataclass
class Stats:
    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected_full: int = 0
    rejected_account: int = 0
    #: Requests that waited for a place in their account's share (then ran or got 429).
    held: int = 0
    tokens: int = 0
    busy_seconds: float = 0.0


class Scheduler:
    """One worker thread serving a bounded, per-account round-robin queue."""

    def __init__(
        self,
        name: str,
        runner: Callable[[Job], Iterator[Any]] | BatchRunner,
        *,
        queue_size: int,
        per_account: int,
        account_wait: float = 0.0,
    ) -> None:
        self.name = name
        self.runner = runner if isinstance(runner, BatchRunner) else OneAtATime(name, runner)
        self.queue_size = queue_size
        self.per_account = per_account
        self.account_wait = account_wait
        self.stats = Stats()
        #: Jobs taken from the queue and not finished yet (at most ``runner.slots``).
        self.active: list[Job] = []
        self._queues: dict[str, OrderedDict[str, deque[Job]]] = {
            priority: OrderedDict() for priority in PRIORITIES
        }
        self._in_flight: dict[str, int] = {}
        #: Requests past their account's share, waiting for a place: account -> line.
        self._held: OrderedDict[str, deque[tuple[Job, asyncio.Future]]] = OrderedDict()
        self._held_total = 0
        #: Jobs in the fair queue (not held, not running).
        self.waiting = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"{name}-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self.active:
                job.cancelled.set()
            for line in self._held.values():
                for job, admitted in line:
                    job.loop.call_soon_threadsafe(_settle, admitted, _shutting_down())
            self._cond.notify_all()
        self._thread.join(5.0)

    @property
    def running(self) -> Job | None:
        """The oldest job being run, or None when the worker is idle."""
        return self.active[0] if self.active else None

    def submit(self, job: Job) -> None:
        """Queue ``job`` now, or refuse it.

        Raises:
            Unavailable: the queue is full (503, retry later).
            AccountBusy: this account has too many requests in flight (429).
        """
        with self._cond:
            self._check()
            if not self._has_room(job.account):
                self._refuse(job.account)
            self._queue(job)

    async def enter(self, job: Job) -> None:
        """Queue ``job``; past its account's share, wait up to ``account_wait`` seconds
        for one of the account's places first (in the account's own line, in order).

        Raises:
            Unavailable: the queue is full, or the service is stopping (503).
            AccountBusy: no place came free in time, or too many wait already (429).
        """
        with self._cond:
            self._check()
            if self._has_room(job.account):
                self._queue(job)
                return
            if self.account_wait <= 0 or self._held_total >= self.queue_size:
                self._refuse(job.account)
            admitted = job.loop.create_future()
            self._held.setdefault(job.account, deque()).append((job, admitted))
            self._held_total += 1
            self.stats.held += 1
        try:
            await asyncio.wait_for(admitted, self.account_wait)
        except TimeoutError:
            with self._cond:
                if self._unhold(job):
                    self._refuse(job.account)
            # Else it was queued at the last moment: go on.
        except asyncio.CancelledError:
            with self._cond:
                held = self._unhold(job)
            if not held:
                self.cancel(job)
            raise

    def _check(self) -> None:
        if self._stopping:
            raise _shutting_down()
        if self.waiting >= self.queue_size:
            self.stats.rejected_full += 1
            raise Unavailable("The model is busy: too many requests are waiting.", 2)

    def _has_room(self, account: str) -> bool:
        return self._in_flight.get(account, 0) < self.per_account

    def _refuse(self, account: str) -> None:
        self.stats.rejected_account += 1
        waited = f" after waiting {self.account_wait:g} s" if self.account_wait > 0 else ""
        raise AccountBusy(
            f"Too many requests in flight for this account (limit {self.per_account})"
            f"{waited}. Try again shortly.",
            2,
        )

    def _queue(self, job: Job) -> None:
        priority = job.priority if job.priority in PRIORITIES else "interactive"
        self._queues[priority].setdefault(job.account, deque()).append(job)
        self._in_flight[job.account] = self._in_flight.get(job.account, 0) + 1
        self.waiting += 1
        self.stats.submitted += 1
        self._cond.notify()

    def _unhold(self, job: Job) -> bool:
        """Take ``job`` out of its account's line; False if it is not there (queued)."""
        line = self._held.get(job.account)
        for entry in line or ():
            if entry[0] is job:
                line.remove(entry)
                if not line:
                    del self._held[job.account]
                self._held_total -= 1
                return True
        return False

    def _promote(self) -> None:
        """Queue held requests whose account has a place again (under the lock)."""
        for account in list(self._held):
            line = self._held[account]
            while line and self._has_room(account) and self.waiting < self.queue_size:
                job, admitted = line.popleft()
                self._held_total -= 1
                self._queue(job)
                job.loop.call_soon_threadsafe(_settle, admitted, None)
            if not line:
                del self._held[account]

    def cancel(self, job: Job) -> None:
        """Stop ``job``: drop it if it waits, or stop it at its next token if it runs."""
        job.cancelled.set()
        with self._cond:
            for queues in self._queues.values():
                pending = queues.get(job.account)
                if pending and job in pending:
                    pending.remove(job)
                    if not pending:
                        del queues[job.account]
                    self.waiting -= 1
                    self._release(job.account)
                    self.stats.cancelled += 1
                    job.emit(DONE)
                    return

    def _release(self, account: str) -> None:
        left = self._in_flight.get(account, 1) - 1
        if left <= 0:
            self._in_flight.pop(account, None)
        else:
            self._in_flight[account] = left
        if self._held:
            self._promote()

    def _next(self) -> Job | None:
        for priority in PRIORITIES:
            queues = self._queues[priority]
            if queues:
                account, pending = next(iter(queues.items()))
                job = pending.popleft()
                del queues[account]
                if pending:  # round-robin: the account goes to the back of the line
                    queues[account] = pending
                self.waiting -= 1
                if self._held:  # a place in the queue came free
                    self._promote()
                return job
        return None

    def _work(self) -> None:
        """Admit jobs into free slots, in the queue's fair order, and step the batch."""
        runner = self.runner
        while True:
            admitted: list[Job] = []
            with self._cond:
                while not self.active and not self.waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self.active:
                    return
                while not self._stopping and len(self.active) + len(admitted) < runner.slots:
                    job = self._next()
                    if job is None:
                        break
                    admitted.append(job)
            for job in admitted:
                try:
                    runner.admit(job)
                except ApplianceError as exc:
                    self._end(job, Failed(str(exc), 400))
                except Exception:
                    log.exception("%s request could not start", self.name)
                    self._end(job, Failed("The model failed to answer this request."))
                else:
                    with self._cond:
                        self.active.append(job)
            if not self.active:
                continue
            started = time.monotonic()
            try:
                ended = runner.step()
            except Exception:
                # The runner should fail requests one by one; if its step itself broke,
                # fail what it held rather than the thread.
                log.exception("%s batch step failed", self.name)
                runner.reset()
                failed = Failed("The model failed to answer this request.")
                ended = [(job, failed) for job in list(self.active)]
            self.stats.busy_seconds += time.monotonic() - started
            for job, last in ended:
                self._end(job, last)

    def _end(self, job: Job, last: Any) -> None:
        """Deliver a job's last event, count it, free its place, then DONE."""
        if last is not None:
            job.emit(last)
        if isinstance(last, Failed):
            self.stats.failed += 1
        else:
            self.stats.tokens += getattr(last, "completion_tokens", 0) or 0
            if job.cancelled.is_set():
                self.stats.cancelled += 1
            else:
                self.stats.completed += 1
        with self._cond:
            if job in self.active:
                self.active.remove(job)
            self._release(job.account)
        job.emit(DONE)
