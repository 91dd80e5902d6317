"""What an operator sees on ``/admin`` and with ``appliance admin status``.

Read-only, assembled from each domain's service; the actions (suspend, unsuspend, delete)
are here too, so that the web page and the CLI do the same thing.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from appliance import heartbeat
from appliance.accounts import service as accounts
from appliance.accounts.models import Account
from appliance.auth import service as auth
from appliance.billing import ledger
from appliance.config import Settings
from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient
from appliance.knowledge import service as knowledge
from appliance.ops import services
from appliance.privacy import erasure, policy, requestlog, retention

RECENT_ERRORS = 20


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    status: str
    created_at: str
    members: int
    owners: list[str]
    balance_usd: str
    storage_bytes: int
    last_activity: str | None


def account_rows(db: Database) -> list[AccountRow]:
    """Every account that is not deleted, oldest first."""
    return [_row(db, account) for account in accounts.accounts(db) if account.status != "deleted"]


def _row(db: Database, account: Account) -> AccountRow:
    members = accounts.members(db, account.id)
    return AccountRow(
        **asdict(account),
        members=len(members),
        owners=[m.email for m in members if m.role == "owner"],
        balance_usd=ledger.usd(ledger.balance(db, account.id)),
        storage_bytes=knowledge.used_bytes(db, account.id),
        last_activity=auth.last_activity(db, account.id),
    )


def inference_state(settings: Settings) -> dict[str, Any]:
    """Model, offload, GPU memory, queue and throughput, or why they are unknown."""
    client = InferenceClient.from_settings(settings)
    state: dict[str, Any] = {"url": settings.inference_url}
    try:
        health = client.health()
    except ApplianceError as exc:
        return {**state, "status": "unavailable", "error": str(exc)}
    fields = ("chat_model", "embedding_model", "device", "gpu_layers", "model_layers")
    state.update({name: health.get(name) for name in (*fields, "queue", "gpus")})
    state.update(status=health.get("status", "ok"), server=health.get("server", "appliance"))
    try:
        metrics = client.metrics()
    except ApplianceError:
        metrics = {}
    state["tokens_per_second"] = metrics.get("appliance_inference_tokens_per_second")
    state["completion_tokens_total"] = metrics.get("appliance_inference_completion_tokens_total")
    state["rejected_full"] = sum(
        value for name, value in metrics.items() if 'status="rejected_full"' in name
    )
    return state


def worker_state(db: Database, settings: Settings, now: datetime) -> dict[str, Any]:
    beat = heartbeat.last_beat(db, heartbeat.WORKER_SERVICE)
    age = (now - beat).total_seconds() if beat else None
    alive = age is not None and age <= settings.worker.heartbeat_stale_seconds
    return {
        "last_heartbeat": beat.isoformat() if beat else None,
        "age_seconds": round(age) if age is not None else None,
        "alive": alive,
    }


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def disk_state(settings: Settings) -> dict[str, Any]:
    paths = settings.paths
    usage = shutil.disk_usage(paths.data_dir)
    database = sum(_size(Path(f"{paths.database}{suffix}")) for suffix in ("", "-wal", "-shm"))
    return {
        "data_dir": str(paths.data_dir),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "used_percent": round(100 * (usage.total - usage.free) / usage.total, 1),
        "database_bytes": database,
        "queue_bytes": _size(paths.queue),
        "files_bytes": _size(paths.files),
        "models_bytes": _size(paths.models),
    }


def overview(db: Database, settings: Settings, now: datetime) -> dict[str, Any]:
    """Everything on the operator page, as JSON-ready data: besides the states above, each
    service's restarts (``appliance up`` or systemd), the last purges, recent server errors
    and the published policy versions."""
    restarts = services.service_states(settings)
    errors = requestlog.entries(db, status="5xx", limit=RECENT_ERRORS)
    return {
        "accounts": [asdict(row) for row in account_rows(db)],
        "inference": inference_state(settings),
        "worker": worker_state(db, settings, now),
        "services": restarts.public() if restarts else None,
        "purges": {
            "runs": [asdict(run) for run in retention.last_runs(db)],
            "overdue": retention.overdue(db, now),
        },
        "disk": disk_state(settings),
        "recent_errors": [asdict(error) for error in errors],
        "policy_versions": [asdict(version) for version in policy.versions(db)],
    }


# -- actions -------------------------------------------------------------------------------


def suspend(
    db: Database, account_id: str, now: datetime, *, actor_id: str | None = None
) -> AccountRow:
    """Suspend an account: its sessions end now, its keys are refused until unsuspended.

    Raises:
        InvalidInput: the acting operator is a member (they would lock themselves out).
    """
    if actor_id and accounts.role_in(db, account_id, actor_id):
        raise InvalidInput("You are a member of this account: suspending it would lock you out.")
    account = accounts.set_status(db, account_id, "suspended")
    auth.revoke_account_sessions(db, account_id, now)
    return _row(db, account)


def unsuspend(db: Database, account_id: str) -> AccountRow:
    return _row(db, accounts.set_status(db, account_id, "active"))


def delete(
    db: Database, settings: Settings, account_id: str, now: datetime, request: str
) -> dict[str, Any]:
    """Lock the account now and have its data erased (the privacy domain's erasure)."""
    account = accounts.account(db, account_id)
    owners = [m.email for m in accounts.members(db, account.id) if m.role == "owner"]
    found = erasure.request_deletion(
        db,
        settings,
        account.id,
        requested_by="operator",
        request=request,
        notify_email=owners[0] if owners else None,
        now=now,
    )
    return {"account_id": found.account_id, "due_at": found.due_at}


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The overview as short text lines for ``appliance admin status``."""
    inference, worker, disk = data["inference"], data["worker"], data["disk"]
    if inference.get("status") == "unavailable":
        model = f"inference: NOT answering ({inference['error']})"
    elif inference.get("server") == "external":
        model = f"inference: external server {inference['url']} serving {inference['chat_model']}"
    else:
        gpus = inference.get("gpus") or []
        vram = ", ".join(f"{g['memory_used_mb']}/{g['memory_total_mb']} MiB" for g in gpus)
        model = (
            f"inference: {inference['chat_model']} on {inference['device']} "
            f"({inference['gpu_layers']}/{inference['model_layers']} layers offloaded"
            f"{', VRAM ' + vram if vram else ''}), queue {inference['queue']}, "
            f"{inference['tokens_per_second'] or 0:.1f} tokens/s"
        )
    alive = f"alive (heartbeat {worker['age_seconds']} s ago)"
    dead = f"NOT running (last heartbeat: {worker['last_heartbeat'] or 'never'})"
    lines = [
        model,
        f"worker: {alive if worker['alive'] else dead}",
        f"disk: {disk['free_bytes'] / 2**30:.1f} GB free of {disk['total_bytes'] / 2**30:.1f} "
        f"GB; database {disk['database_bytes'] / 2**20:.1f} MB, files "
        f"{disk['files_bytes'] / 2**20:.1f} MB",
    ]
    if (restarts := data.get("services")) is not None:
        found = services.Restarts.from_public(restarts)
        watcher = "systemd" if found.source == "systemd" else "appliance up"
        lines.append(f"services ({watcher}{'' if found.running else ', not running now'}):")
        lines += [f"  {line}" for line in services.summary(found)]
    if (purges := data.get("purges")) is not None:
        overdue = ", ".join(purges["overdue"])
        lines.append(f"purges: {'overdue: ' + overdue if overdue else 'ok'}")
    if (errors := data.get("recent_errors")) is not None:
        lines.append(f"recent server errors: {len(errors)}")
    lines.append(f"accounts: {len(data['accounts'])}")
    for row in data["accounts"]:
        lines.append(
            f"  {row['id']}  {row['status']:<9}  {row['members']} member(s)  "
            f"{row['balance_usd']:>10}  {row['storage_bytes'] / 2**20:8.1f} MB  "
            f"last active {row['last_activity'] or 'never'}  {row['name']}"
        )
    return lines
