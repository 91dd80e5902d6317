"""Unit tests of the inference scheduler with plain runner functions (no model).

Each test runs inside ``asyncio.run`` because jobs deliver their events to an asyncio
queue through ``loop.call_soon_threadsafe``; the scheduler's worker is a real thread.
Runners block on ``threading.Event`` gates the test controls, never on timers.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest
from conftest import wait_until

from appliance.errors import InvalidInput, Unavailable
from appliance.inference.base import Delta, Finish
from appliance.inference.scheduler import DONE, AccountBusy, Failed, Job, Scheduler

pytestmark = pytest.mark.inference

TIMEOUT = 10.0


def async_test(function):
    """Run an ``async def`` test body in a fresh event loop, with an overall deadline."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(function(*args, **kwargs), 30))

    return wrapper


class Runner:
    """A runner that records the order jobs start in and yields two events per job.

    A job whose payload has a gate waits until the gate opens (or the job is cancelled)
    before it yields its events; ``entered[payload]`` is set once it is waiting.
    """

    def __init__(self, *gated: str) -> None:
        self.started: list[Any] = []
        self.gates = {name: threading.Event() for name in gated}
        self.entered = {name: threading.Event() for name in gated}

    def __call__(self, job: Job):
        self.started.append(job.payload)
        gate = self.gates.get(job.payload)
        if gate is not None:
            self.entered[job.payload].set()
            while not gate.wait(0.01):
                if job.cancelled.is_set():
                    yield Finish("cancelled", 3, 0)
                    return
        yield Delta(f"{job.payload}:")
        yield Finish("stop", 3, 2)

    async def wait_entered(self, name: str) -> None:
        assert await asyncio.to_thread(self.entered[name].wait, TIMEOUT), f"{name} never ran"


def make_job(account: str, payload: Any, priority: str = "interactive") -> Job:
    return Job(account=account, payload=payload, loop=asyncio.get_running_loop(), priority=priority)


async def busy_with_long(
    schedulers, account: str, priority: str = "interactive", **options
) -> tuple[Runner, Scheduler, Job]:
    """A scheduler (``schedulers``' ``options``) whose runner is inside the gated job
    ``long`` of ``account``."""
    runner = Runner("long")
    scheduler = schedulers(runner, **options)
    long = make_job(account, "long", priority)
    scheduler.submit(long)
    await runner.wait_entered("long")
    return runner, scheduler, long


async def events_of(job: Job) -> list[Any]:
    """Every event of ``job`` up to (not including) DONE."""
    events = []
    while True:
        event = await asyncio.wait_for(job.events.get(), TIMEOUT)
        if event is DONE:
            return events
        events.append(event)


@pytest.fixture
def schedulers():
    """Build schedulers that are always stopped at the end of the test."""
    made: list[Scheduler] = []

    def build(
        runner,
        *,
        queue_size: int = 32,
        per_account: int = 8,
        account_wait: float = 0.0,
        start: bool = True,
    ):
        scheduler = Scheduler(
            "test",
            runner,
            queue_size=queue_size,
            per_account=per_account,
            account_wait=account_wait,
        )
        made.append(scheduler)
        if start:
            scheduler.start()
        return scheduler

    yield build
    for scheduler in made:
        for gate in getattr(scheduler.runner, "gates", {}).values():
            gate.set()
        if scheduler._thread.is_alive():
            scheduler.stop()


@async_test
async def test_jobs_submitted_before_start_are_served_round_robin(schedulers):
    runner = Runner()
    scheduler = schedulers(runner, start=False)
    jobs = [
        make_job(account, name)
        for account, name in [
            ("a", "a1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b1"),
            ("b", "b2"),
            ("c", "c1"),
        ]
    ]
    for job in jobs:
        scheduler.submit(job)
    assert scheduler.waiting == 6

    scheduler.start()
    results = [await events_of(job) for job in jobs]

    assert runner.started == ["a1", "b1", "c1", "a2", "b2", "a3"]
    for job, events in zip(jobs, results, strict=True):
        assert events == [Delta(f"{job.payload}:"), Finish("stop", 3, 2)]
    assert scheduler.waiting == 0
    assert scheduler.stats.completed == 6
    assert scheduler.stats.submitted == 6
    assert scheduler.stats.tokens == 12


@async_test
async def test_burst_from_one_account_does_not_starve_another(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "x")
    assert scheduler.running is long

    burst = [make_job("a", f"a{i}") for i in range(1, 5)]
    late = make_job("b", "b1")
    for job in [*burst, late]:
        scheduler.submit(job)
    assert scheduler.waiting == 5

    runner.gates["long"].set()
    for job in [long, *burst, late]:
        await events_of(job)

    assert runner.started == ["long", "a1", "b1", "a2", "a3", "a4"]


@async_test
async def test_interactive_requests_go_before_batch_ones(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "x", "batch")

    jobs = [
        make_job("a", "batch-a", "batch"),
        make_job("b", "batch-b", "batch"),
        make_job("c", "chat-c", "interactive"),
        make_job("a", "chat-a", "interactive"),
        make_job("d", "odd-d", "urgent"),  # unknown priorities count as interactive
    ]
    for job in jobs:
        scheduler.submit(job)

    # A running batch job is never interrupted by the interactive ones.
    assert scheduler.running is long
    runner.gates["long"].set()
    for job in [long, *jobs]:
        await events_of(job)

    assert runner.started == ["long", "chat-c", "chat-a", "odd-d", "batch-a", "batch-b"]


@async_test
async def test_per_account_limit_counts_the_running_job_and_raises_account_busy(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "a", per_account=2)
    second = make_job("a", "a2")
    scheduler.submit(second)

    with pytest.raises(AccountBusy, match="limit 2"):
        scheduler.submit(make_job("a", "a3"))
    assert scheduler.stats.rejected_account == 1
    assert scheduler.waiting == 1

    other = make_job("b", "b1")
    scheduler.submit(other)  # another account is not affected

    runner.gates["long"].set()
    for job in (long, second, other):
        await events_of(job)

    again = make_job("a", "a4")  # the account's places were released
    scheduler.submit(again)
    assert await events_of(again) == [Delta("a4:"), Finish("stop", 3, 2)]
    assert runner.started == ["long", "a2", "b1", "a4"]


@async_test
async def test_full_queue_raises_unavailable_with_retry_after(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "x", queue_size=2)
    waiting = [make_job("a", "a1"), make_job("b", "b1")]
    for job in waiting:
        scheduler.submit(job)

    with pytest.raises(Unavailable, match="busy") as caught:
        scheduler.submit(make_job("c", "c1"))
    assert caught.value.retry_after == 2
    assert scheduler.stats.rejected_full == 1
    assert scheduler.waiting == 2
    assert scheduler.stats.submitted == 3

    runner.gates["long"].set()
    for job in (long, *waiting):
        await events_of(job)
    late = make_job("c", "c2")
    scheduler.submit(late)
    await events_of(late)
    assert runner.started == ["long", "a1", "b1", "c2"]


@async_test
async def test_cancelling_a_waiting_job_drops_it_emits_done_and_frees_its_place(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "x", queue_size=2, per_account=1)
    dropped = make_job("a", "dropped")
    kept = make_job("b", "kept")
    scheduler.submit(dropped)
    scheduler.submit(kept)

    scheduler.cancel(dropped)

    assert await events_of(dropped) == []  # DONE straight away, nothing else
    assert dropped.cancelled.is_set()
    assert scheduler.waiting == 1
    assert scheduler.stats.cancelled == 1
    # Both its queue place and the account's in-flight place are free again.
    replacement = make_job("a", "replacement")
    scheduler.submit(replacement)

    runner.gates["long"].set()
    for job in (long, kept, replacement):
        await events_of(job)
    assert runner.started == ["long", "kept", "replacement"]
    assert scheduler.stats.completed == 3
    assert scheduler.stats.cancelled == 1


@async_test
async def test_cancelling_the_running_job_stops_it_and_the_next_one_runs(schedulers):
    runner, scheduler, long = await busy_with_long(schedulers, "a", per_account=1)
    after = make_job("b", "after")
    scheduler.submit(after)

    scheduler.cancel(long)

    assert await events_of(long) == [Finish("cancelled", 3, 0)]
    assert await events_of(after) == [Delta("after:"), Finish("stop", 3, 2)]
    assert scheduler.stats.cancelled == 1
    assert scheduler.stats.completed == 1
    # The cancelled job's account may submit again.
    again = make_job("a", "again")
    scheduler.submit(again)
    await events_of(again)
    assert runner.started == ["long", "after", "again"]


@async_test
async def test_runner_exceptions_become_failed_events_and_the_worker_carries_on(schedulers, caplog):
    def runner(job: Job):
        yield Delta("partial")
        if job.payload == "crash":
            raise RuntimeError("segfault-ish internals")
        if job.payload == "refuse":
            raise InvalidInput("The conversation is too long.")
        yield Finish("stop", 1, 1)

    scheduler = schedulers(runner)
    crash, refuse, fine = make_job("a", "crash"), make_job("a", "refuse"), make_job("a", "fine")
    for job in (crash, refuse, fine):
        scheduler.submit(job)

    crashed = await events_of(crash)
    refused = await events_of(refuse)
    finished = await events_of(fine)

    assert crashed == [Delta("partial"), Failed("The model failed to answer this request.", 500)]
    assert "segfault-ish" not in crashed[-1].message  # internals are not shown to callers
    assert refused == [Delta("partial"), Failed("The conversation is too long.", 400)]
    assert finished == [Delta("partial"), Finish("stop", 1, 1)]
    assert scheduler.stats.failed == 2
    assert scheduler.stats.completed == 1
    # The worker lets go of the last job just after its DONE event.
    wait_until(lambda: scheduler.running is None, timeout=TIMEOUT, what="an idle worker")
    assert "test request failed" in caplog.text  # the crash was logged with its traceback
    assert "segfault-ish internals" in caplog.text


@async_test
async def test_stop_cancels_the_running_job_and_refuses_new_ones(schedulers):
    _runner, scheduler, long = await busy_with_long(schedulers, "a")

    await asyncio.to_thread(scheduler.stop)

    assert long.cancelled.is_set()
    assert await events_of(long) == [Finish("cancelled", 3, 0)]
    assert not scheduler._thread.is_alive()
    with pytest.raises(Unavailable, match="shutting down") as caught:
        scheduler.submit(make_job("b", "late"))
    assert caught.value.retry_after == 5


@async_test
async def test_past_its_share_a_request_waits_for_its_accounts_place_not_before_others(
    schedulers,
):
    runner = Runner("long")
    scheduler = schedulers(runner, per_account=2, account_wait=TIMEOUT)
    long = make_job("a", "long")
    await scheduler.enter(long)
    await runner.wait_entered("long")
    second = make_job("a", "a2")
    await scheduler.enter(second)
    third = make_job("a", "a3")
    entering = asyncio.create_task(scheduler.enter(third))
    await asyncio.sleep(0.05)

    assert not entering.done()  # held in the account's own line, not in the queue
    assert scheduler.waiting == 1 and scheduler.stats.held == 1
    other = make_job("b", "b1")
    await scheduler.enter(other)  # another account does not wait behind it

    runner.gates["long"].set()
    await asyncio.wait_for(entering, TIMEOUT)  # queued once "long" freed a place
    for job in (long, second, other, third):
        assert (await events_of(job))[-1] == Finish("stop", 3, 2)
    assert runner.started == ["long", "a2", "b1", "a3"]
    assert scheduler.stats.rejected_account == 0


@async_test
async def test_a_held_request_is_refused_with_retry_after_once_its_wait_is_over(schedulers):
    runner = Runner("long")
    scheduler = schedulers(runner, per_account=1, account_wait=0.2)
    long = make_job("a", "long")
    await scheduler.enter(long)
    await runner.wait_entered("long")

    with pytest.raises(AccountBusy, match=r"limit 1\) after waiting 0.2 s") as caught:
        await scheduler.enter(make_job("a", "a2"))
    assert caught.value.retry_after == 2
    assert scheduler.stats.rejected_account == 1
    assert scheduler._held_total == 0 and scheduler.waiting == 0

    runner.gates["long"].set()
    await events_of(long)
    late = make_job("a", "a3")
    await scheduler.enter(late)  # the place is free again
    assert (await events_of(late))[-1] == Finish("stop", 3, 2)


@async_test
async def test_a_burst_of_12_from_one_account_is_answered_not_refused(schedulers):
    runner = Runner("a0")
    scheduler = schedulers(runner, per_account=8, account_wait=TIMEOUT)
    jobs = [make_job("a", f"a{n}") for n in range(12)]

    entering = asyncio.gather(*(scheduler.enter(job) for job in jobs))
    await runner.wait_entered("a0")
    await asyncio.sleep(0.05)
    assert scheduler.stats.held == 4 and scheduler.waiting == 7
    runner.gates["a0"].set()
    await entering

    for job in jobs:
        assert (await events_of(job))[-1] == Finish("stop", 3, 2)
    assert scheduler.stats.completed == 12
    assert scheduler.stats.rejected_account == 0
    assert runner.started == [job.payload for job in jobs]  # in the order they came
