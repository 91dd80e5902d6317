"""The task queue: one SqliteHuey per process, in its own file under the data dir.

``create_huey(settings)`` builds the queue and registers every task on it; tasks are
looked up by name (``queue.tasks.heartbeat``). Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass

from huey import SqliteHuey, crontab
from huey.api import TaskWrapper
from huey.exceptions import TaskLockedException

from appliance import heartbeat, mail
from appliance.accounts import service as accounts
from appliance.billing import tasks as billing_tasks
from appliance.clock import utcnow
from appliance.config import Settings
from appliance.db import open_db
from appliance.heartbeat import WORKER_SERVICE
from appliance.inference.client import InferenceClient
from appliance.instances import service as instances
from appliance.knowledge import service as knowledge
from appliance.privacy import erasure, export, policy, retention

log = logging.getLogger(__name__)

#: Huey lock held while a document is ingested (its name, formatted with the document id).
INGEST_LOCK = "ingest-{}"
#: Queued documents one ingestion task takes at most (it embeds their chunks together).
INGEST_BATCH = 32


@dataclass(frozen=True)
class TaskQueue:
    """The Huey instance and the task wrappers registered on it."""

    huey: SqliteHuey
    heartbeat: TaskWrapper
    send_mail: TaskWrapper
    send_signin_code: TaskWrapper
    ingest_document: TaskWrapper
    purge: TaskWrapper
    build_export: TaskWrapper
    billing_minute: TaskWrapper
    billing_reconcile: TaskWrapper
    billing_storage: TaskWrapper


def create_queue(settings: Settings, *, immediate: bool = False) -> TaskQueue:
    """Build the queue for ``settings``.

    Args:
        immediate: run tasks synchronously in the caller (unit tests).
    """
    settings.paths.data_dir.mkdir(parents=True, exist_ok=True)
    huey = SqliteHuey(
        name="appliance",
        filename=str(settings.paths.queue),
        immediate=immediate,
        utc=True,
        timeout=settings.database.busy_timeout_ms / 1000,
    )

    def record_heartbeat() -> None:
        with open_db(settings) as db:
            heartbeat.beat(db, WORKER_SERVICE)

    resume_once = threading.Lock()  # never released: only the first worker thread resumes

    @huey.on_startup()
    def _on_startup() -> None:
        record_heartbeat()
        # Huey does not redeliver a task interrupted by a crash: documents left half-way
        # are queued again here (once per process; this hook runs in every worker thread).
        if resume_once.acquire(blocking=False):
            with open_db(settings) as db:
                pending = knowledge.unfinished(db)
            for doc in pending:
                ingest_document(doc.id)
            # Retention catches up at once after downtime (and a fresh install has a
            # first run to show in doctor) instead of waiting for minute 17.
            purge()

    beat_task = huey.periodic_task(crontab(minute="*"), name="heartbeat")(record_heartbeat)

    def operator_name() -> str:
        """The mail footer's name (set at setup or on /admin, else the configured one)."""
        with open_db(settings) as db:
            return policy.operator_name(db, settings)

    @huey.task(retries=3, retry_delay=30, name="send_mail")
    def send_mail(template: str, to: str, context: dict) -> None:
        message = mail.compose(settings, template, to, company=operator_name(), **context)
        mail.deliver(settings, message)

    @huey.task(retries=3, retry_delay=30, name="send_signin_code")
    def send_signin_code(email: str, code: str) -> None:
        # Decided here, not in the request, so that known and unknown addresses take
        # the same time to answer.
        with open_db(settings) as db:
            allowed = accounts.may_sign_in(db, settings, email, utcnow())
        if allowed:
            minutes = settings.auth.code_ttl_minutes
            context = {"company": operator_name(), "code": code, "minutes": minutes}
            mail.deliver(settings, mail.compose(settings, "signin_code", email, **context))

    @huey.task(retries=5, retry_delay=30, name="ingest_document")
    def ingest_document(document_id: str) -> None:
        # Other queued documents come along (each under its own lock; one another task
        # holds is left to it): their chunks are embedded and written together. Their own
        # tasks find them ready, or wait for the lock and retry.
        with contextlib.ExitStack() as locks:
            try:
                locks.enter_context(huey.lock_task(INGEST_LOCK.format(document_id)))
            except TaskLockedException:
                return  # another task took it along with its own and is on it
            db = locks.enter_context(open_db(settings))
            batch = [document_id]
            for other in knowledge.queued(db, INGEST_BATCH):
                if other == document_id or len(batch) >= INGEST_BATCH:
                    continue
                try:
                    locks.enter_context(huey.lock_task(INGEST_LOCK.format(other)))
                except TaskLockedException:
                    continue
                batch.append(other)
            knowledge.ingest(db, settings, InferenceClient.from_settings(settings), batch)

    @huey.periodic_task(crontab(minute="17"), name="purge")
    def purge() -> None:
        # Hourly; each job catches up on everything past its limit, so a missed run
        # (downtime) only delays the work. The lock keeps two runs from overlapping.
        with huey.lock_task("purge"):
            run_purges(settings, send_mail)

    @huey.task(retries=2, retry_delay=30, name="build_export")
    def build_export(export_id: str) -> None:
        with huey.lock_task(f"export-{export_id}"), open_db(settings) as db:
            try:
                export.build(db, settings, export_id, utcnow())
            except Exception:
                export.fail(db, export_id)
                raise

    @huey.periodic_task(crontab(minute="*"), name="billing_minute")
    def billing_minute() -> dict:
        # Holds, instance time, low-balance notices, automatic top-ups: each catches up.
        with huey.lock_task("billing_minute"):
            return billing_tasks.every_minute(settings, utcnow(), send_mail, instances.running)

    @huey.periodic_task(crontab(minute="*/15"), name="billing_reconcile")
    def billing_reconcile() -> int:
        # Credits paid Checkout Sessions a lost webhook missed (no-op without Stripe).
        with huey.lock_task("billing_reconcile"):
            return billing_tasks.reconcile(settings, utcnow())

    @huey.periodic_task(crontab(minute="5", hour="0"), name="billing_storage")
    def billing_storage() -> int:
        with huey.lock_task("billing_storage"):
            return billing_tasks.charge_storage(settings, utcnow())

    tasks = (beat_task, send_mail, send_signin_code, ingest_document, purge, build_export)
    billing = (billing_minute, billing_reconcile, billing_storage)
    # Each task's name is its field's.
    return TaskQueue(huey, **{task.name: task for task in (*tasks, *billing)})


def run_purges(settings: Settings, send_mail: TaskWrapper, *, max_batches: int | None = None):
    """Every retention job once, then the confirmation email of each completed erasure
    (``appliance purge --now`` and the hourly task)."""
    with open_db(settings) as db:
        results = retention.run_all(db, settings, utcnow(), max_batches=max_batches)
        years = settings.privacy.tax_retention_years
        for account_id, email, receipt in erasure.confirmations_due(db):
            done = {"erased_at": receipt.at[:10], "receipt_hash": receipt.hash, "tax_years": years}
            send_mail("account_erased", email, done)
            erasure.confirmation_sent(db, account_id)
    return results
