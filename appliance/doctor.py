"""``appliance doctor``: check an install and print one line per check."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlite_utils import Database

from appliance import heartbeat, mail, permissions, vault
from appliance.config import Settings
from appliance.db import integrity_check, open_db
from appliance.errors import ApplianceError
from appliance.inference import models
from appliance.inference.client import InferenceClient

MIN_FREE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    checks = [_data_dir(settings), _permissions(settings), _secrets(settings), _mail(settings)]
    try:
        db = open_db(settings)
    except ApplianceError as exc:
        checks += [Check("database", "fail", str(exc)), *_billing(settings, None)]
    else:
        with db:
            checks += [*_database(settings, db), *_purges(db), *_billing(settings, db)]
    checks += [*_models(settings), _selftest(settings), _disk(settings), _gpu(), *_tls(settings)]
    return [*checks, *_services(settings), *_restarts(settings)]


def _data_dir(settings: Settings) -> Check:
    root = settings.paths.data_dir
    if not root.is_dir():
        return Check("data dir", "fail", f"{root} does not exist: run `appliance init`")
    if not os.access(root, os.W_OK):
        return Check("data dir", "fail", f"{root} is not writable by this user")
    return Check("data dir", "ok", str(root))


def _permissions(settings: Settings) -> Check:
    root = settings.paths.data_dir
    loose = permissions.loose_paths(root)
    if loose:
        shown = ", ".join(f"{path.relative_to(root.parent)} {mode:04o}" for path, mode in loose[:3])
        more = f" and {len(loose) - 3} more" if len(loose) > 3 else ""
        fix = "run `appliance init` as the data dir's owner to make them private"
        return Check("permissions", "fail", f"readable by other users: {shown}{more} ({fix})")
    return Check("permissions", "ok", "the data dir is private (directories 0700, files 0600)")


def _secrets(settings: Settings) -> Check:
    missing = [n for n in vault.SECRETS if not (settings.paths.secrets / n).exists()]
    if missing:
        return Check("secrets", "fail", f"missing {', '.join(missing)}: run `appliance init`")
    loose = [n for n in vault.SECRETS if (settings.paths.secrets / n).stat().st_mode & 0o077]
    if loose:
        return Check("secrets", "fail", f"{', '.join(loose)} readable by others (chmod 600)")
    return Check("secrets", "ok", f"{len(vault.SECRETS)} present, mode 0600")


def _mail(settings: Settings) -> Check:
    try:
        mail.check_settings(settings)
    except ApplianceError as exc:
        return Check("mail", "fail", str(exc))
    backends = ", ".join(settings.mail.backends)
    if "console" in settings.mail.backends:
        return Check("mail", "warn", f"{backends} (console prints sign-in codes: local use only)")
    return Check("mail", "ok", backends)


def _database(settings: Settings, db: Database) -> Iterator[Check]:
    result = integrity_check(db)
    journal = db.execute("pragma journal_mode").fetchone()[0]
    detail = f"{settings.paths.database.name}: integrity {result}, journal {journal}"
    yield Check("database", "ok" if result == "ok" else "fail", detail)
    yield Check("sqlite-vec", "ok", db.execute("select vec_version()").fetchone()[0])
    last = heartbeat.last_beat(db, heartbeat.WORKER_SERVICE)
    if last is None:
        yield Check("worker", "warn", "no heartbeat yet (worker never ran)")
    else:
        age = (datetime.now(UTC) - last).total_seconds()
        fresh = age <= settings.worker.heartbeat_stale_seconds
        detail = f"last heartbeat {int(age)} s ago" + ("" if fresh else " (not running?)")
        yield Check("worker", "ok" if fresh else "warn", detail)


def _purges(db: Database) -> Iterator[Check]:
    """When each retention purge last ran; warn when one is overdue (privacy/retention.py)."""
    from appliance.privacy import retention

    now = datetime.now(UTC)
    late = retention.overdue(db, now)
    for run in retention.last_runs(db):
        if run.finished_at is None:
            yield Check(f"purge {run.job}", "warn", "never ran (is the worker running?)")
            continue
        hours = (now - datetime.fromisoformat(run.finished_at)).total_seconds() / 3600
        detail = f"last ran {hours:.1f} h ago, {run.deleted} deleted"
        if not run.complete:
            detail += ", unfinished"
        yield Check(f"purge {run.job}", "warn" if run.job in late else "ok", detail)
    for item in late:
        if item.startswith("erasure of"):
            yield Check("erasure", "warn", f"{item} is past its erase window")


def _billing(settings: Settings, db: Database | None) -> Iterator[Check]:
    """Billing and Stripe (the keys are only ever reported as configured or not), and the
    ledger when the database opened."""
    from appliance.billing import meter, payments
    from appliance.billing import service as billing

    try:
        meter.prices_for(settings, None)
        for item in settings.billing.model_prices:
            meter.prices_for(settings, item.partition("=")[0].strip())
    except ApplianceError as exc:
        yield Check("billing", "fail", str(exc))
        return
    if not settings.billing.enabled:
        yield Check("billing", "ok", "off: usage is metered, nothing is charged")
    elif payments.configured(settings):
        yield Check("billing", "ok", f"on; Stripe configured ({settings.stripe.api_base})")
    else:
        missing = [n for n in ("secret_key", "webhook_secret") if not getattr(settings.stripe, n)]
        detail = f"on, but stripe.{' and stripe.'.join(missing)} not set: top-ups are off"
        yield Check("billing", "warn", detail)
    if db is None:
        return
    broken = len(billing.invariant_violations(db))
    if broken:
        yield Check("ledger", "fail", f"{broken} account(s) whose balance is not the ledger sum")
    else:
        yield Check("ledger", "ok", "every balance equals its ledger sum")


def _models(settings: Settings) -> Iterator[Check]:
    registry = models.load_registry(settings)
    for kind in ("chat", "embedding"):
        try:
            model = registry.resolve(kind, getattr(settings.inference, f"{kind}_model"))
        except ApplianceError as exc:
            yield Check(f"{kind} model", "fail", str(exc))
            continue
        path = registry.path(model)
        if not path.exists():
            yield Check(f"{kind} model", "fail", f"{path} is missing")
        elif path.stat().st_size == 0:
            yield Check(f"{kind} model", "fail", f"{path} is empty")
        else:
            size = path.stat().st_size / 1024**2
            yield Check(f"{kind} model", "ok", f"{model.id} ({size:.0f} MiB)")


def _selftest(settings: Settings) -> Check:
    """The chat and embedding models run in a child process (appliance/inference/selftest.py)."""
    from appliance.inference import selftest

    try:
        verdict, why = selftest.check(settings)
    except ApplianceError as exc:
        return Check("model self-test", "fail", f"not run: {exc}")
    if verdict.crashed:
        return Check("model self-test", "fail", selftest.crash_message(verdict))
    if not verdict.ok:
        return Check("model self-test", "fail", f"{verdict.outcome}: {verdict.detail}")
    repack = "on" if verdict.repack else "off"
    detail = f"{verdict.detail} ({verdict.seconds:.1f} s in a child process); CPU repacking"
    return Check("model self-test", "ok", f"{detail} {repack} ({why})")


def _disk(settings: Settings) -> Check:
    usage = shutil.disk_usage(settings.paths.data_dir if settings.paths.data_dir.exists() else "/")
    free = usage.free / 1024**3
    status = "ok" if usage.free >= MIN_FREE_BYTES else "warn"
    return Check("free disk", status, f"{free:.1f} GiB free")


def _gpu() -> Check:
    from appliance.inference.base import gpu_backends, gpu_offload_supported
    from appliance.inference.loader import llama_errors

    try:
        with llama_errors() as errors:
            gpu = gpu_offload_supported()
        built = gpu_backends()
    except Exception as exc:  # llama-cpp-python missing or broken
        return Check("llama.cpp", "fail", f"cannot load llama-cpp-python: {exc}")
    if gpu:
        return Check("llama.cpp", "ok", f"built with GPU offload ({', '.join(built)})")
    if built:  # a GPU build that found no device: a driver, or no GPU at all
        why = f" ({'; '.join(errors)})" if errors else ""
        detail = f"built for {', '.join(built)} but found no GPU{why}: models run on the CPU"
        return Check("llama.cpp", "warn", detail)
    return Check("llama.cpp", "warn", "built WITHOUT GPU support: models run on the CPU")


def _tls(settings: Settings) -> list[Check]:
    """The certificate the web service serves: readable, matching its key, not expiring."""
    import ssl

    cert, key = settings.web.tls_cert, settings.web.tls_key
    if not cert and not key:
        https = settings.public_url.startswith("https://")
        detail = "ended by a proxy (public_url is https)" if https else "off: plain HTTP"
        return [Check("tls", "ok" if https else "warn", detail)]
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return [Check("tls", "fail", f"cannot use {cert} with {key}: {exc}")]
    try:
        # The stdlib's only certificate parser; private, hence the guard.
        not_after = ssl._ssl._test_decode_cert(cert)["notAfter"]  # type: ignore[attr-defined]
    except (AttributeError, KeyError, ssl.SSLError):
        return [Check("tls", "ok", f"{cert} (expiry unknown)")]
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
    days = (expires - datetime.now(UTC)).days
    status = "fail" if days < 0 else "warn" if days < 30 else "ok"
    return [Check("tls", status, f"{cert} expires {expires:%Y-%m-%d} (in {days} days)")]


def _services(settings: Settings) -> list[Check]:
    try:
        health = InferenceClient.from_settings(settings).health(timeout=2)
        model = f"{health.get('chat_model')} on {health.get('device')}"
        layers = f"{health.get('gpu_layers')}/{health.get('model_layers')} layers on GPU"
        inference = Check("inference", "ok", f"{model}, {layers}")
    except ApplianceError:
        inference = _port("inference", settings.inference.host, settings.inference.port)
    probe = f"{settings.local_web_url}/healthz"
    return [inference, _port("web", settings.web.host, settings.web.port, probe=probe)]


def _restarts(settings: Settings) -> Iterator[Check]:
    """How often each service died (``appliance up``'s record, or systemd's count)."""
    from appliance.ops import services

    found = services.service_states(settings)
    if found is None:
        return
    where = "" if found.running else " (appliance up is not running: its last record)"
    for s in found.services:
        status = "warn" if s.restarts or s.last_exit else "ok"
        yield Check(f"{s.name} restarts", status, services.describe(s) + where)


def _port(name: str, host: str, port: int, probe: str | None = None) -> Check:
    """A service that is not running is fine if its port is free for it to start on.

    Args:
        probe: the service's /healthz URL, asked first.
    """
    if probe:
        import httpx

        try:
            # Our own service on this machine: its certificate may be self-signed.
            response = httpx.get(probe, timeout=2, verify=False)  # noqa: S501
            if response.status_code == 200 and response.json().get("status") == "ok":
                return Check(name, "ok", f"serving on {host}:{port}")
        except (httpx.HTTPError, ValueError):
            pass
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except PermissionError:
            return Check(
                name, "warn", f"not running (port {port} needs privileges this user lacks)"
            )
        except OSError:
            return Check(name, "fail", f"port {host}:{port} is taken by another program")
    return Check(name, "warn", f"not running (port {host}:{port} is free)")
