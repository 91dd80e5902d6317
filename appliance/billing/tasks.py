"""The worker's billing jobs (registered as periodic tasks in ``appliance.tasks``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlite_utils import Database

from appliance.accounts import service as accounts
from appliance.accounts.models import MANAGERS
from appliance.billing import ledger, meter, payments, service, webhooks
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError
from appliance.knowledge import service as knowledge

log = logging.getLogger(__name__)

#: ``send(template, to, context)``: queues one email.
SendMail = Callable[[str, str, dict], None]
#: ``running(db)``: ``(instance_id, account_id, created_at)`` of every running instance
#: (``instances.service.running``; instances sit above billing, which meters them).
Running = Callable[[Database], list[tuple[str, str, str]]]


def every_minute(
    settings: Settings, now: datetime, send: SendMail, running: Running
) -> dict[str, int]:
    """Expire stale holds, charge instance time, send low-balance notices and make
    automatic top-ups. Each step is idempotent, so a late or repeated run is harmless."""
    with open_db(settings) as db:
        expired = meter.expire_holds(db, now)
        minutes = meter.charge_instance_time(db, settings, running(db), now)
        notices = 0
        for account_ref in service.low_balance_accounts(db, settings, now):
            notices += _notify_low_balance(db, settings, account_ref, send)
        topped = 0
        for account_ref in service.auto_topup_candidates(db, settings):
            try:
                topped += payments.auto_topup(db, settings, account_ref, now) == "credited"
            except ApplianceError as exc:
                log.warning("automatic top-up failed: %s", exc)
    return {"expired_holds": expired, "minutes": minutes, "notices": notices, "topups": topped}


def _notify_low_balance(db, settings: Settings, account_ref: str, send: SendMail) -> int:
    try:
        account = accounts.account(db, account_ref)
    except ApplianceError:
        return 0  # pseudonymized: nobody to tell
    context = {
        "account_name": account.name,
        "balance_usd": ledger.usd(ledger.balance(db, account_ref)),
        "threshold_usd": f"{settings.billing.low_balance_usd:.2f}",
    }
    managers = [m.email for m in accounts.members(db, account_ref) if m.role in MANAGERS]
    for email in managers:
        send("low_balance", email, context)
    return len(managers)


def reconcile(settings: Settings, now: datetime) -> int:
    with open_db(settings) as db:
        return webhooks.reconcile(db, settings, now)


def charge_storage(settings: Settings, now: datetime) -> int:
    if not settings.billing.enabled or settings.billing.price_storage_gb_month == 0:
        return 0
    with open_db(settings) as db:
        used = {
            account.id: sum(doc.size for doc in knowledge.documents(db, account.id))
            for account in accounts.accounts(db)
        }
        return meter.charge_storage(db, settings, used, now)
