"""Shared fixtures: real settings on a tmp data dir, real SQLite, the real app and services.

The bundled models are installed once per test session into a shared directory; data dirs
of individual tests link to it. One inference service (the real tiny model) is shared by
every test in the session that needs one.
"""

from __future__ import annotations

import os

# NumPy's OpenBLAS would start a thread per core for every matrix product; the tests' are
# small (a numpy BERT, test vectors), where those threads cost three times the CPU of one
# (tests/inference/test_convert.py: 21 s -> 8 s) and take the cores from the inference
# service. Set before anything imports numpy; children (services) inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib
import io
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from browser_support import CHROMIUM, close_chromium, shared_chromium

from appliance import vault
from appliance.cli import initialise
from appliance.config import Settings
from appliance.db import open_db


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class JSONHandler(BaseHTTPRequestHandler):
    """The base of the tests' stand-in HTTP servers: no access log, JSON answers."""

    def log_message(self, *args) -> None:
        pass

    def send_json(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port by a thread; yields the server's URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def in_threads(targets: list, timeout: float | None = None) -> None:
    """Call each of ``targets`` in a thread of its own, all at once; wait for them all."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def read_db(settings: Settings, read):
    """``read(db)`` on a connection of its own, closed after (for polling what another
    process writes)."""
    db = open_db(settings)
    try:
        return read(db)
    finally:
        db.close()


def make_settings(data_dir: Path, **overrides) -> Settings:
    """Settings for ``data_dir``, isolated from the developer's environment."""
    return Settings.load(data_dir=data_dir, environ={}, overrides=overrides)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child ``appliance`` process using ``settings``' data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["APPLIANCE_DATA_DIR"] = str(settings.paths.data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    # One llama.cpp thread: the services share the cores with the tests and with each
    # other (scripts/test.sh runs two workers), and llama.cpp's threads wait for each other
    # spinning, so one that the OS deschedules stalls every step. Measured on 2 cores: the
    # suite in two workers took 468 s with 2 threads, 386 s with 1.
    env["APPLIANCE_INFERENCE__N_THREADS"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The bundled models, installed once per session."""
    from appliance.inference import models

    root = tmp_path_factory.mktemp("models-data")
    settings = make_settings(root)
    models.install_defaults(settings, log=lambda message: None)
    return settings.paths.models


def link_models(settings: Settings, models_dir: Path) -> None:
    target = settings.paths.models
    if target.exists() and not target.is_symlink():
        shutil.rmtree(target)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(models_dir, target_is_directory=True)


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Initialised settings (secrets, database) on a fresh data dir, no models."""
    settings = make_settings(tmp_path / "data")
    initialise(settings)
    return settings


@pytest.fixture
def db(settings):
    database = open_db(settings)
    yield database
    database.close()


class MutableClock:
    """An injected clock that tests move forward instead of sleeping."""

    def __init__(self) -> None:
        from datetime import UTC, datetime

        self.now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

    def __call__(self):
        return self.now

    def advance(self, **delta) -> None:
        from datetime import timedelta

        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def queue(settings):
    """The task queue in immediate mode: tasks (mail) run inside the request."""
    from appliance.tasks import create_queue

    return create_queue(settings, immediate=True)


@pytest.fixture
def app(settings, clock, queue):
    from appliance.web import create_app

    return create_app(settings, clock=clock, queue=queue)


@pytest.fixture
def client(app):
    from litestar.testing import TestClient

    with TestClient(app, base_url="http://127.0.0.1:8000") as test_client:
        yield test_client


def run_appliance(settings: Settings, *args: str, **popen) -> subprocess.Popen:
    """``python -m appliance ARGS`` on ``settings``' data dir, in a session of its own, its
    output discarded unless ``popen`` says otherwise."""
    options = {
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
        **popen,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", *args], env=service_env(settings), **options
    )


def stop_process(process: subprocess.Popen, timeout: float = 15) -> int:
    """SIGINT (the services' clean stop), SIGKILL if it still runs after ``timeout``
    seconds; returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def discard(process: subprocess.Popen) -> None:
    """End a fixture's service at teardown: SIGKILL to its session (it was started in one
    of its own), so its children go too. No teardown checks a clean stop, which costs a
    second or two of shutdown and interpreter exit per process; its data dir is thrown
    away. Tests that check the clean stop call ``stop_process`` / ``Service.stop``."""
    if process.poll() is None:  # not reaped: its process group cannot be another's yet
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def manage_client(settings: Settings, db, clock, email: str, name: str):
    """A test client of a new web app (tasks run at once) that sends the manage key of a
    new account ``name``'s owner ``email``; the account's id is ``client.account_id``."""
    from litestar.testing import TestClient

    from appliance.accounts import service as accounts
    from appliance.auth import service as auth
    from appliance.tasks import create_queue
    from appliance.web import create_app

    owner, account = accounts.create_user(db, email, clock(), account_name=name)
    _, manage = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="m", scope="manage", now=clock()
    )
    app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {manage}"
    client.account_id = account.id
    return client


@contextlib.contextmanager
def managed_app(settings: Settings, models_dir: Path, db, clock) -> Iterator[tuple]:
    """``manage_client`` for account "A" on ``settings`` with the models linked, open:
    yields (app, account id, client)."""
    link_models(settings, models_dir)
    with manage_client(settings, db, clock, "owner@example.com", "A") as client:
        yield client.app, client.account_id, client


def indexed_document(db, settings, clock, account, user, name, text, vector=(0.1, 0.2, 0.3, 0.4)):
    """A document uploaded and indexed as ingestion would leave it (one chunk, a 4-d
    vector; no model runs)."""
    from appliance.knowledge import service as knowledge
    from appliance.knowledge.store import Chunk, KnowledgeStore

    doc = knowledge.add_document(
        db, settings, account.id, user.id, name, io.BytesIO(text.encode()), clock()
    ).document
    store = KnowledgeStore(db)
    store.ensure_vectors(4, "test")
    with db.conn:
        store.add_chunks(doc.id, account.id, [Chunk(0, text, None, "", 10)], [list(vector)])
        store.set_status(
            doc.id, "ready", "2026-11-27T09:00:00+00:00", chunks_total=1, chunks_done=1
        )
    return doc


def stored_exchange(
    db, account_id, user_id, instance, question, answer, now, conversation_id=None
) -> str:
    """A question and its answer kept as ``/v1`` keeps them (no model runs): in a new
    conversation, or appended to ``conversation_id``. Returns the conversation's id."""
    from appliance.chat import service as chat

    return chat.store_exchange(
        db,
        account_id,
        user_id,
        instance,
        [{"role": "user", "content": question}],
        answer,
        now,
        conversation_id=conversation_id,
        passages=[],
        usage={"prompt_tokens": 5, "completion_tokens": 5},
    )


def stored_document(db, account_id: str, doc_id: str, chunks: list, vectors: list) -> None:
    """A ready document with these chunks and vectors, written straight into the
    knowledge store (no file, no ingestion)."""
    from appliance.db import write_transaction
    from appliance.knowledge.store import Document, KnowledgeStore

    store = KnowledgeStore(db)
    store.ensure_vectors(len(vectors[0]), "test")
    now = "2026-11-27T09:00:00+00:00"
    with write_transaction(db):
        store.insert_document(
            Document(doc_id, account_id, None, f"{doc_id}.txt", "txt", 1, doc_id, "ready",
                     None, len(chunks), len(chunks), "test", now, now)
        )  # fmt: skip
        store.add_chunks(doc_id, account_id, chunks, vectors)


@dataclass
class Service:
    """A running ``appliance`` child process."""

    process: subprocess.Popen
    url: str
    settings: Settings
    log_path: Path

    def stop(self) -> int:
        return stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_service(
    args: list[str], settings: Settings, url: str, *, health: str = "/healthz", **env: str
) -> Service:
    log_path = settings.paths.data_dir / f"{args[0]}-{time.monotonic_ns()}.log"
    handle = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", *args],
        env=service_env(settings, **env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service = Service(process, url, settings, log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{args[0]} exited early:\n{service.log()}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url + health, timeout=1).status_code == 200
        return False

    try:
        wait_until(healthy, timeout=90, what=f"{args[0]} at {url}")
    except BaseException:
        service.stop()
        raise
    return service


def start_inference(settings: Settings, **env: str) -> Service:
    port = free_port()
    return start_service(
        ["inference"],
        settings,
        f"http://127.0.0.1:{port}",
        APPLIANCE_INFERENCE__PORT=str(port),
        **env,
    )


@pytest.fixture(scope="session")
def inference_settings(tmp_path_factory, models_dir) -> Settings:
    """A data dir with models and secrets for the shared inference service."""
    settings = make_settings(tmp_path_factory.mktemp("inference-data"))
    link_models(settings, models_dir)
    initialise(settings)
    return settings


@pytest.fixture(scope="session")
def inference_service(inference_settings) -> Iterator[Service]:
    """The one inference service (real bundled models) shared by the session (by each
    worker), with the product's engine and settings but one llama.cpp thread (service_env).
    Its greedy answers are not bit-identical between runs (batch composition and reused
    prefixes change the arithmetic; see tests/inference/test_batching.py), so tests compare
    what is guaranteed instead."""
    service = start_inference(inference_settings)
    yield service
    discard(service.process)


@pytest.fixture(scope="session")
def inference_key(inference_settings) -> str:
    return vault.read_secret(inference_settings, "inference_key")


@pytest.fixture
def live_web(settings) -> Iterator[Service]:
    """The real web service on a free port, for browser tests."""
    port = free_port()
    service = start_service(["web", "--port", str(port)], settings, f"http://127.0.0.1:{port}")
    yield service
    discard(service.process)


@pytest.fixture(scope="module")
def browser():
    """Chromium, shared by a run of consecutive tests that use it (browser_support.py)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it as root)")
    return shared_chromium()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if nextitem is None or "browser" not in nextitem.fixturenames:
        close_chromium()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def live_app(settings) -> Iterator[Service]:
    """The real web service and worker (mail goes out through the task queue)."""
    yield from _live(settings)


@pytest.fixture
def live_kb(linked_settings) -> Iterator[Service]:
    """The real web service and worker, with the shared inference service."""
    yield from _live(linked_settings)


def _live(settings: Settings) -> Iterator[Service]:
    from appliance import heartbeat
    from appliance.tasks import WORKER_SERVICE

    worker = run_appliance(settings, "worker")

    def worker_alive():
        return read_db(settings, lambda db: heartbeat.last_beat(db, WORKER_SERVICE))

    try:
        wait_until(worker_alive, timeout=30, what="the worker's first heartbeat")
        port = free_port()
        web = start_service(["web", "--port", str(port)], settings, f"http://127.0.0.1:{port}")
        try:
            yield web
        finally:
            discard(web.process)
    finally:
        discard(worker)


@pytest.fixture
def linked_settings(settings, inference_service) -> Settings:
    """``settings`` pointed at the shared inference service (its key copied over), through
    the data dir's appliance.toml so that child processes (web, worker) see it too."""
    (settings.paths.secrets / "inference_key").write_text(
        (inference_service.settings.paths.secrets / "inference_key").read_text()
    )
    config = settings.paths.data_dir / "appliance.toml"
    config.write_text(f'[inference]\nurl = "{inference_service.url}"\n')
    return make_settings(settings.paths.data_dir)


@pytest.fixture
def production_logs():
    """Logging exactly as every service configures it (JSON lines, redaction), at DEBUG,
    into a buffer the test reads; the previous configuration is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    buffer = io.StringIO()
    from appliance.privacy import logs

    handler = logs.configure("debug", buffer)
    yield buffer
    root.removeHandler(handler)
    for old in saved[0]:
        root.addHandler(old)
    root.setLevel(saved[1])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
