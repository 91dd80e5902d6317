"""Crash test of the services that heal: under a real ``appliance up`` (billing on, a
credited account), the inference process is killed with SIGSEGV in the middle of a streamed
chat answer and again in the middle of a streamed /v1 answer, and the worker with SIGKILL
in the middle of a document's ingestion. Throughout, /healthz of the web never fails.
Each cut stream ends with an error event, nothing is charged for it and nothing stays held
or busy; the supervisor brings each service back (/readyz ready again), the next chat
works, the document reaches ``ready``, and doctor and ``admin status`` report the
restarts with the signals. (Web and worker kill -9 under load: tests/ops/test_crash.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
from conftest import (
    free_port,
    link_models,
    make_settings,
    service_env,
    stop_process,
    wait_until,
)

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.billing import ledger
from appliance.billing import service as billing
from appliance.chat import service as chat
from appliance.cli import main
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.instances import service as instances
from appliance.instances.service import chat_models
from appliance.knowledge import service as knowledge

pytestmark = [pytest.mark.inference, pytest.mark.timeout(240)]

CSRF = "crash-inference-csrf"
LONG = "Write a very long story about a lighthouse keeper and her cat."
UNFINISHED = ("queued", "extracting", "embedding")


def no_core_files() -> None:
    # A SIGSEGV'd 100 MB process must not leave a core file wherever the test runs.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Box:
    """``appliance up`` on free ports over a data dir with an owner, an instance and credit."""

    def __init__(self, settings, tmp_path) -> None:
        self.settings = settings
        self.log = tmp_path / "up.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = open_db(settings)
        try:
            now = utcnow()
            self.user, self.account = accounts.create_user(
                db, "heal@example.com", now, account_name="Heal"
            )
            self.models = chat_models(settings)
            self.instance = instances.create(
                db,
                self.account.id,
                "owner",
                {"name": "assistant", "max_tokens": 400, "temperature": 0.0},
                models=self.models,
                max_tokens_cap=settings.inference.max_tokens,
                now=now,
            )
            billing.adjust(db, self.account.id, 5, "crash test credit", now)
            session = auth.create_session(db, settings, self.user.id, self.account.id, now)
            _, self.key = auth.create_key(
                db,
                user_id=self.user.id,
                account_id=self.account.id,
                name="heal",
                scope="inference",
                now=now,
            )
        finally:
            db.close()
        self.web = httpx.Client(
            base_url=self.url,
            cookies={"session": session, "csrf": CSRF},
            headers={"X-CSRFToken": CSRF},
            timeout=60,
        )
        with open(self.log, "wb") as out:
            self.up = subprocess.Popen(
                [sys.executable, "-m", "appliance", "up", "--port", str(self.port)],
                env=service_env(settings, APPLIANCE_INFERENCE__PORT=str(free_port())),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=no_core_files,  # only setrlimit, before exec
            )

    def child(self, name: str) -> psutil.Process | None:
        """The running ``appliance NAME`` child of ``up`` (None while it is restarting)."""
        assert self.up.poll() is None, self.output()[-3000:]
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(self.up.pid).children():
                with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
                    if process.cmdline()[-1:] == [name] and process.status() != "zombie":
                        return process
        return None

    def ready(self) -> bool:
        assert self.up.poll() is None, self.output()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/readyz", timeout=5).status_code == 200
        return False

    def back(self, name: str, dead_pid: int) -> None:
        """The supervisor started NAME again and the web is ready again."""

        def restarted():
            child = self.child(name)
            return child is not None and child.pid != dead_pid

        wait_until(restarted, timeout=30, interval=0.1, what=f"{name} to be restarted")
        wait_until(self.ready, timeout=60, interval=0.2, what="/readyz after the restart")

    def db(self):
        return open_db(self.settings)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.web.close()
        return stop_process(self.up, 30)


class HealthWatch(threading.Thread):
    """GET /healthz of the web service five times a second; every failure is kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopped = threading.Event()
        self.checks = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            try:
                response = httpx.get(self.url + "/healthz", timeout=5)
                if response.status_code != 200:
                    self.failures.append(f"{time.monotonic():.1f}: {response.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{time.monotonic():.1f}: {type(exc).__name__}")
            self.checks += 1


def sse(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[6:]


def held_and_charged(box: Box) -> tuple[int, int, list[str]]:
    db = box.db()
    try:
        holds = [r["state"] for r in db.query("select state from billing_holds")]
        usage = ledger.entries(db, box.account.id, kinds=("usage",))
        return ledger.held(db, box.account.id), len(usage), holds
    finally:
        db.close()


@pytest.fixture
def box(settings, models_dir, tmp_path):
    link_models(settings, models_dir)
    (settings.paths.data_dir / "appliance.toml").write_text("[billing]\nenabled = true\n")
    running = Box(make_settings(settings.paths.data_dir), tmp_path)
    try:
        wait_until(running.ready, timeout=120, interval=0.2, what="appliance up to be ready")
        yield running
    finally:
        running.stop()


def test_inference_sigsegv_mid_stream_and_worker_sigkill_mid_ingestion(box, capsys):
    started = time.monotonic()
    watch = HealthWatch(box.url)
    watch.start()

    # 1. The chat page's stream: SIGSEGV to the model's process after the first words.
    conversation = box.web.post("/api/conversations", json={"instance_id": box.instance.id}).json()[
        "id"
    ]
    events = []
    inference = box.child("inference")
    with box.web.stream(
        "POST", f"/api/conversations/{conversation}/messages", json={"content": LONG}
    ) as response:
        assert response.status_code == 200
        for data in sse(response):
            events.append(json.loads(data))
            if events[-1]["type"] == "delta" and len(events) == 3:
                os.kill(inference.pid, signal.SIGSEGV)
    assert [e["type"] for e in events[:3]] == ["user", "status", "delta"]
    assert events[-1]["type"] == "error", events[-3:]
    assert "stopped in the middle of this answer" in events[-1]["message"]
    assert "done" not in {e["type"] for e in events}
    inference.wait(10)  # gone (how it died: the supervisor's log line, below)
    # Not charged, nothing held; the question kept, the conversation free.
    assert held_and_charged(box)[:2] == (0, 0)
    db = box.db()
    try:
        kept = chat.get(db, box.account.id, box.user.id, conversation)
    finally:
        db.close()
    assert [(m.role, m.content) for m in kept.messages] == [("user", LONG)]
    assert kept.generating_since is None

    # The supervisor brings inference back; "Answer again" now works (a short answer).
    box.back("inference", inference.pid)
    db = box.db()
    try:
        instances.update(
            db,
            box.account.id,
            "owner",
            box.instance.id,
            {"max_tokens": 8},
            models=box.models,
            max_tokens_cap=box.settings.inference.max_tokens,
            now=utcnow(),
        )
    finally:
        db.close()
    with box.web.stream("POST", f"/api/conversations/{conversation}/regenerate", json={}) as r:
        answered = [json.loads(data) for data in sse(r)]
    assert answered[-1]["type"] == "done", answered[-3:]
    assert answered[-1]["message"]["content"]
    held, charged, _ = held_and_charged(box)
    assert (held, charged) == (0, 1)  # only the answer that was given

    # 2. A /v1 stream: SIGSEGV again; an OpenAI-shaped error chunk, then [DONE].
    inference = box.child("inference")
    chunks = []
    with box.web.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "assistant",
            "messages": [{"role": "user", "content": LONG}],
            "max_tokens": 400,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {box.key}"},
    ) as response:
        assert response.status_code == 200
        for data in sse(response):
            chunks.append(data)
            if len(chunks) == 2:
                os.kill(inference.pid, signal.SIGSEGV)
    assert chunks[-1] == "[DONE]"
    error = json.loads(chunks[-2])["error"]
    assert "stopped in the middle of this answer" in error["message"]
    assert error["type"] == "server_error"
    inference.wait(10)  # gone (how it died: the supervisor's log line, below)
    assert held_and_charged(box)[:2] == (0, 1)
    box.back("inference", inference.pid)

    # 3. The worker: SIGKILL while it ingests a document (extraction runs in a child
    # process for a few hundred ms at least); it is restarted and finishes the document.
    text = "\n\n".join(
        f"## Section {n}\n\nThe lighthouse keeper logs ship number {n} passing at dawn, "
        f"notes the wind from the {('north', 'east', 'south', 'west')[n % 4]} and trims the "
        f"lamp's wick before the fog rolls in over the rocks of the bay."
        for n in range(24)
    )
    upload = box.web.post("/api/documents", files={"file": ("log.md", text.encode())})
    assert upload.status_code == 202, upload.text
    document = upload.json()["id"]

    def ingesting():
        status = box.web.get(f"/api/documents/{document}").json()["status"]
        assert status != "ready", "ingestion ended before the worker could be killed"
        return status in ("extracting", "embedding")

    worker = box.child("worker")
    wait_until(ingesting, timeout=30, interval=0.02, what="ingestion to start")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    box.back("worker", worker.pid)

    def ready():
        status = box.web.get(f"/api/documents/{document}").json()
        assert status["status"] != "failed", status
        return status["status"] == "ready"

    wait_until(ready, timeout=60, interval=0.3, what="the document to be resumed and ready")
    search = box.web.get("/api/search", params={"q": "lighthouse keeper wick"}).json()
    assert search["legs"] == ["bm25", "vector"] and search["hits"]

    # Nothing stuck: no hold open, no conversation busy, no document unfinished.
    db = box.db()
    try:
        assert (
            db.execute(
                "select count(*) from conversations where generating_since is not null"
            ).fetchone()[0]
            == 0
        )
        assert not [d for d in knowledge.documents(db, box.account.id) if d.status in UNFINISHED]
        assert billing.invariant_violations(db) == []
    finally:
        db.close()
    held, charged, holds = held_and_charged(box)
    assert held == 0 and "held" not in holds and charged == 1

    # The restarts, with the signals, in doctor and `appliance admin status`.
    data_dir = ["--data-dir", str(box.settings.paths.data_dir)]
    main(["doctor", *data_dir])
    doctor = capsys.readouterr().out
    lines = {line.split()[1]: line for line in doctor.splitlines() if "restarts" in line}
    assert "2 restarts (last died: signal SIGSEGV at " in lines["inference"], doctor
    assert "1 restart (last died: signal SIGKILL at " in lines["worker"], doctor
    assert lines["web"].startswith("ok") and "0 restarts" in lines["web"]
    assert main(["admin", "status", *data_dir]) == 0
    status = capsys.readouterr().out
    assert "  inference: running, 2 restarts (last died: signal SIGSEGV at " in status

    watch.stopped.set()
    watch.join(10)
    assert watch.failures == [] and watch.checks > 20, watch.failures

    # One content-free log line per death.
    deaths = [
        json.loads(line)
        for line in box.output().splitlines()
        if line.startswith("{") and '"appliance.supervisor"' in line
    ]
    assert [(d["service"], d["signal"], d["restarts"]) for d in deaths] == [
        ("inference", "SIGSEGV", 0),
        ("inference", "SIGSEGV", 1),
        ("worker", "SIGKILL", 0),
    ]
    assert "lighthouse" not in box.output()
    assert box.stop() == 0
    with capsys.disabled():
        print(
            f"\ncrash test: {time.monotonic() - started:.1f} s after ready, {watch.checks} checks"
        )
