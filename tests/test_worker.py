"""The task queue and the worker service."""

import signal
import subprocess
from datetime import UTC, datetime

from conftest import read_db, run_appliance, wait_until

from appliance import heartbeat
from appliance.privacy import retention
from appliance.tasks import WORKER_SERVICE, create_queue


def test_heartbeat_task_records_a_row(settings, db):
    queue = create_queue(settings, immediate=True)
    assert heartbeat.last_beat(db, WORKER_SERVICE) is None
    queue.heartbeat()
    beat = heartbeat.last_beat(db, WORKER_SERVICE)
    assert beat is not None
    assert (datetime.now(UTC) - beat).total_seconds() < 5


def test_real_consumer_beats_and_stops_cleanly(settings):
    process = run_appliance(
        settings,
        "worker",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=False,
    )
    try:

        def beaten():
            return read_db(settings, lambda db: heartbeat.last_beat(db, WORKER_SERVICE))

        wait_until(beaten, timeout=30, what="a worker heartbeat")

        def purged():
            return read_db(settings, lambda db: all(r.complete for r in retention.last_runs(db)))

        # Retention runs at start (catching up after downtime), not only at minute 17.
        wait_until(purged, timeout=30, what="the purge run at the worker's start")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        output = process.stdout.read()
        assert "Traceback" not in output
        assert "database is locked" not in output
    finally:
        if process.poll() is None:
            process.kill()
