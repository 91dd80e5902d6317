"""Crash test: kill -9 the web service and the worker, repeatedly, while uploads, chats and
Stripe top-up webhooks are in flight (loopback only, bounded: a few rounds of a second or
two). Afterwards the database passes integrity_check, `appliance kb audit` is clean, no
document is stuck, every paid top-up is credited exactly once and the ledger invariant
holds."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from billing_support import WEBHOOK_SECRET, billing_config, stripe_standin  # noqa: F401
from conftest import free_port, link_models, make_settings, service_env, wait_until
from stripe_standin import event, session_object, sign

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import service as billing
from appliance.cli import initialise, main
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.instances import service as instances
from appliance.instances.service import chat_models
from appliance.knowledge import service as knowledge

pytestmark = [pytest.mark.inference, pytest.mark.timeout(150)]

ROUNDS = 4
CSRF = "crash-test-csrf"
UNFINISHED = ("queued", "extracting", "embedding")


def spawn(settings, *args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", *args],
            env=service_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes its children too
        )


def kill9(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_web(settings, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = spawn(settings, "web", "--port", str(port), log=log)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        return False

    wait_until(up, timeout=30, what="the web service")
    return process, url


@pytest.fixture
def box(settings, inference_service, models_dir, stripe_standin):  # noqa: F811
    """A data dir wired to the shared inference service and the Stripe stand-in, with an
    owner, an instance, credit, a session and a manage key."""
    link_models(settings, models_dir)
    (settings.paths.secrets / "inference_key").write_text(
        (inference_service.settings.paths.secrets / "inference_key").read_text()
    )
    (settings.paths.data_dir / "appliance.toml").write_text(
        f'[inference]\nurl = "{inference_service.url}"\n' + billing_config(stripe_standin.url)
    )
    s = make_settings(settings.paths.data_dir)
    initialise(s)
    db = open_db(s)
    try:
        now = utcnow()
        owner, account = accounts.create_user(db, "crash@example.com", now, account_name="C")
        instance = instances.create(
            db,
            account.id,
            "owner",
            {"name": "crash", "max_tokens": 8},
            models=chat_models(s),
            max_tokens_cap=s.inference.max_tokens,
            now=now,
        )
        billing.adjust(db, account.id, 50, "crash test credit", now)
        session = auth.create_session(db, s, owner.id, account.id, now)
        _, key = auth.create_key(
            db, user_id=owner.id, account_id=account.id, name="crash", scope="manage", now=now
        )
    finally:
        db.close()
    return {
        "settings": s,
        "account": account,
        "instance": instance.id,
        "cookies": {"session": session, "csrf": CSRF},
        "key": key,
    }


def load(url: str, box: dict, topups: list[dict], stop: threading.Event, counts: dict) -> None:
    """Uploads, chats and webhooks until ``stop``; errors (the web was killed) are expected."""
    cookies, headers = box["cookies"], {"X-CSRFToken": CSRF}

    def uploads():
        with httpx.Client(base_url=url, cookies=cookies, headers=headers, timeout=10) as http:
            while not stop.is_set():
                text = f"Crash test note {uuid.uuid4()}: the kettle is in the second cupboard.\n"
                with contextlib.suppress(httpx.HTTPError):
                    r = http.post("/api/documents", files={"file": ("note.txt", text.encode())})
                    counts["uploads"] += r.status_code == 202
                stop.wait(0.05)  # leave the shared CPU model some time for the chats

    def chats():
        # A new conversation each time: a conversation whose answer was cut off by the kill
        # stays busy for a while (chat.service.STALE_TURN), by design.
        with httpx.Client(base_url=url, cookies=cookies, headers=headers, timeout=20) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, KeyError):
                    conversation = http.post(
                        "/api/conversations", json={"instance_id": box["instance"]}
                    ).json()["id"]
                    counts["chats_started"] += 1
                    r = http.post(
                        f"/api/conversations/{conversation}/messages",
                        json={"content": "Where is the kettle?", "stream": False},
                    )
                    counts["chats"] += r.status_code == 200

    def webhooks():
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                for topup in topups:
                    payload = topup["event"]
                    with contextlib.suppress(httpx.HTTPError):
                        r = http.post(
                            "/stripe/webhook",
                            content=payload,
                            headers={
                                "Stripe-Signature": sign(payload, WEBHOOK_SECRET),
                                "Content-Type": "application/json",
                            },
                        )
                        counts["webhooks"] += r.status_code == 200
                time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (uploads, chats, webhooks)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=25)


def new_topup(url: str, box: dict, n: int) -> dict | None:
    try:
        r = httpx.post(
            url + "/api/billing/checkout",
            json={"amount_usd": 10},
            headers={"Authorization": f"Bearer {box['key']}"},
            timeout=10,
        )
    except httpx.HTTPError:
        return None
    if r.status_code != 201:
        return None
    created = r.json()
    session_id = created["url"].rsplit("/", 1)[1]
    obj = session_object(created["topup"]["id"], session_id, cents=1000)
    return {
        "id": created["topup"]["id"],
        "event": event(f"evt_crash_{n}", "checkout.session.completed", obj),
    }


def test_kill_9_web_and_worker_during_uploads_chats_and_webhooks(box, tmp_path):
    settings = box["settings"]
    log = tmp_path / "services.log"
    rng = random.Random(9)  # noqa: S311 - when to kill, not a secret
    topups: list[dict] = []
    counts = {"uploads": 0, "chats_started": 0, "chats": 0, "webhooks": 0}
    started = time.monotonic()
    for n in range(ROUNDS):
        worker = spawn(settings, "worker", log=log)
        web, url = start_web(settings, log)
        created = new_topup(url, box, n)
        if created:
            topups.append(created)
        stop = threading.Event()
        runner = threading.Thread(target=load, args=(url, box, topups, stop, counts))
        runner.start()
        time.sleep(rng.uniform(1.0, 3.0))
        kill9(web)
        kill9(worker)
        stop.set()
        runner.join(timeout=30)
    assert topups, "no top-up could be created"
    assert counts["uploads"] and counts["chats_started"] and counts["webhooks"], counts

    # Restart once: the worker resumes interrupted ingestion; Stripe retries its webhooks.
    worker = spawn(settings, "worker", log=log)
    web, url = start_web(settings, log)
    try:
        for topup in topups:
            payload = topup["event"]
            r = httpx.post(
                url + "/stripe/webhook",
                content=payload,
                headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET),
                         "Content-Type": "application/json"},
            )  # fmt: skip
            assert r.status_code == 200, r.text

        def settled():
            db = open_db(settings)
            try:
                docs = knowledge.documents(db, box["account"].id)
                return docs and all(d.status not in UNFINISHED for d in docs)
            finally:
                db.close()

        wait_until(settled, timeout=60, interval=0.5, what="every document to finish")
    finally:
        web.send_signal(signal.SIGINT)
        worker.send_signal(signal.SIGINT)
        for process in (web, worker):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                kill9(process)

    db = open_db(settings)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = [d.status for d in knowledge.documents(db, box["account"].id)]
        assert statuses and not set(statuses) & set(UNFINISHED)
        assert billing.invariant_violations(db) == []
        for topup in topups:
            credited = db.execute(
                "select count(*) from ledger_entries where kind = 'topup' and topup_id = ?",
                [topup["id"]],
            ).fetchone()[0]
            assert credited == 1, topup["id"]
    finally:
        db.close()
    assert main(["kb", "audit", "--data-dir", str(settings.paths.data_dir)]) == 0
    print(
        f"{ROUNDS} kill -9 rounds in {time.monotonic() - started:.1f} s: {counts}, "
        f"{len(statuses)} documents ({statuses.count('ready')} ready), {len(topups)} top-ups"
    )
