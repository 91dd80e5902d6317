"""The batched engine's outbox: a request's events arrive in order, whichever thread
hands them over, and a closed event loop does not stop deliveries to the others."""

from __future__ import annotations

import asyncio

from appliance.inference.outbox import Outbox
from appliance.inference.scheduler import DONE, Job


def test_flushed_then_drained_events_arrive_in_order_and_a_closed_loop_is_skipped():
    gone = asyncio.new_event_loop()
    gone.close()

    async def main() -> list:
        loop = asyncio.get_running_loop()
        outbox = Outbox()
        job = Job(account="a", payload=None, loop=loop)
        orphan = Job(account="b", payload=None, loop=gone)
        try:
            for i in range(200):
                outbox.put(orphan, i)
                outbox.put(job, i)
                if i % 7 == 0:
                    outbox.flush()  # delivered by the outbox's thread
            outbox.drain()  # the rest, from this thread, after whatever it took
            job.emit(DONE)  # as the scheduler does once a request ends
            events = []
            while (event := await asyncio.wait_for(job.events.get(), 10)) is not DONE:
                events.append(event)
            return events
        finally:
            outbox.close()

    assert asyncio.run(main()) == list(range(200))
