"""Audit 2026-12, finding 2: a chunked body (no Content-Length) was spooled in full before
its size was checked. Every route that takes a body now stops reading at its limit + 1 byte
and answers 413; the server process writes less than the limit + 1 MiB anywhere (data dir,
temporary files, logs), measured by the kernel's count of the bytes it wrote."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from conftest import discard, free_port, make_settings, start_service, wait_until

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.cli import initialise
from appliance.clock import utcnow
from appliance.db import open_db
from appliance.web.security import DEFAULT_BODY_LIMIT

MiB = 1024 * 1024
BOUNDARY = "attackboundary7f3a"
#: What the attacker sends: far over every limit below.
ATTACK_BYTES = 24 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real web service (its own process, so the kernel counts what it writes) with
    small limits, and an owner's ``manage`` key."""
    root = tmp_path_factory.mktemp("chunked")
    data_dir = root / "data"
    data_dir.mkdir()
    (data_dir / "appliance.toml").write_text(
        "[knowledge]\nmax_upload_mb = 1\n[persona]\nmax_sample_bytes = 100000\n"
    )
    settings = make_settings(data_dir)
    initialise(settings)
    db = open_db(settings)
    now = utcnow()
    owner, account = accounts.create_user(db, "owner@example.com", now, account_name="A")
    _, key = auth.create_key(
        db, user_id=owner.id, account_id=account.id, name="t", scope="manage", now=now
    )
    db.close()
    tmp = root / "tmp"
    tmp.mkdir()
    port = free_port()
    service = start_service(
        ["web", "--port", str(port)], settings, f"http://127.0.0.1:{port}", TMPDIR=str(tmp)
    )
    service.key = key
    yield service
    discard(service.process)


def written_by(pid: int) -> int:
    """Bytes the process has passed to write()/pwrite() so far, on any file."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/PID/io")


def post_chunked(url: str, path: str, headers: dict[str, str], body_bytes: int) -> tuple[int, int]:
    """POST a multipart upload of ``body_bytes`` zeros with chunked transfer encoding over
    a real socket; returns (status, bytes the server accepted before it answered)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Transfer-Encoding: chunked",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    response = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while chunk := sock.recv(65536):
                response.extend(chunk)
                if b"\r\n\r\n" in response:
                    answered.set()
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    block = b"a" * (64 * 1024)
    sent = 0
    try:
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        while sent < body_bytes and not answered.is_set():
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
        if not answered.is_set():
            tail = f"\r\n--{BOUNDARY}--\r\n".encode()
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
    except OSError:
        pass  # the server answered and closed the connection while we were sending
    wait_until(answered.is_set, timeout=60, what="the server's answer")
    sock.close()
    reader.join(5)
    status_line = bytes(response).split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), sent


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/api/documents", 1 * MiB),
        ("/api/voice-samples", 100_000),
        ("/settings/persona/samples", 100_000),  # the page's form: CSRF reads it first
        ("/api/auth/code", DEFAULT_BODY_LIMIT),  # JSON routes: Litestar's own limit
    ],
)
def test_a_chunked_body_is_cut_at_the_limit(server, path, limit):
    before = written_by(server.process.pid)
    status, sent = post_chunked(
        server.url, path, {"Authorization": f"Bearer {server.key}"}, ATTACK_BYTES
    )
    written = written_by(server.process.pid) - before
    assert status == 413
    assert written < limit + MiB, f"the server wrote {written:,} bytes for a {limit:,} limit"
    assert sent < ATTACK_BYTES, "the server read the whole body before answering"
