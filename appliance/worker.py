"""The worker service: a Huey consumer for ``appliance worker``."""

from __future__ import annotations

import logging

from appliance.config import Settings
from appliance.db import open_db
from appliance.knowledge import service as knowledge
from appliance.tasks import INGEST_LOCK, TaskQueue, create_queue

log = logging.getLogger(__name__)


def flush_stale_locks(settings: Settings, queue: TaskQueue) -> set[str]:
    """Release the ingestion locks a killed worker left behind; returns their names.

    Huey keeps a task lock in the queue database until the task ends, so after a crash
    (kill -9, power loss) the lock of every document that was being ingested stays set,
    and the resumed ingestion would be refused forever ("unable to acquire lock"). At
    start-up no task of this worker is running yet, and there is one worker per data dir
    (the systemd unit, or ``appliance up``), so every such lock is stale.
    """
    with open_db(settings) as db:
        names = [INGEST_LOCK.format(doc.id) for doc in knowledge.unfinished(db)]
    flushed = queue.huey.flush_locks(*names) if names else set()
    if flushed:
        log.warning("released %d ingestion lock(s) left by an interrupted worker", len(flushed))
    return flushed


def run_worker(settings: Settings) -> None:
    """Consume tasks until SIGINT/SIGTERM (Huey finishes running tasks first on SIGINT)."""
    queue = create_queue(settings)
    flush_stale_locks(settings, queue)
    consumer = queue.huey.create_consumer(
        workers=settings.worker.workers,
        worker_type="thread",
        periodic=True,
        check_worker_health=True,
    )
    log.info("worker starting with %d threads", settings.worker.workers)
    consumer.run()
