"""The worker service: a Huey consumer for ``appliance worker``."""

from __future__ import annotations

import logging

from appliance.config import Settings
from appliance.tasks import create_queue

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Consume tasks until SIGINT/SIGTERM (Huey finishes running tasks first on SIGINT)."""
    queue = create_queue(settings)
    consumer = queue.huey.create_consumer(
        workers=settings.worker.workers,
        worker_type="thread",
        periodic=True,
        check_worker_health=True,
    )
    log.info("worker starting with %d threads", settings.worker.workers)
    consumer.run()
