"""Helpers for the persona tests: a recording fake of Anthropic's API, apps and sign-in.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import make_settings
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.cli import initialise
from appliance.config import Settings
from appliance.db import open_db

NOW = datetime.now(UTC).replace(microsecond=0)
API_KEY = "test-anthropic-key-not-real"
ANSWER = "You are the assistant of Example Bakery. Answer briefly and warmly."
PROFILE = {
    "business_name": "Example Bakery",
    "intended_use": "Answering customer emails about orders and allergens",
    "tone": "warm, direct",
    "formality": "casual",
    "length": "short",
    "language": "English",
    "age_confirmed": True,
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeAnthropic:
    """A local HTTP server that answers like the Messages API and records every request."""

    status: int = 200
    text: str = ANSWER
    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                fake.requests.append(
                    Recorded(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                if fake.status != 200:
                    payload = {
                        "type": "error",
                        "error": {"type": "api_error", "message": "Internal server error"},
                    }
                else:
                    payload = {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": json.loads(body).get("model", "claude"),
                        "content": [{"type": "text", "text": fake.text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 10, "output_tokens": 20},
                    }
                data = json.dumps(payload).encode()
                self.send_response(fake.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def fake_anthropic(**kwargs) -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def new_settings(data_dir: Path, **overrides) -> Settings:
    settings = make_settings(data_dir, **overrides)
    initialise(settings)
    return settings


def claude_settings(data_dir: Path, fake: FakeAnthropic, **overrides) -> Settings:
    return new_settings(
        data_dir,
        **{
            "persona.anthropic_api_key": API_KEY,
            "persona.anthropic_base_url": fake.url,
            **overrides,
        },
    )


@contextmanager
def web(settings: Settings) -> Iterator[TestClient]:
    """The real app with a clock fixed at NOW (sessions are created at NOW too)."""
    from appliance.web import create_app

    app = create_app(settings, clock=lambda: NOW)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


def sign_in(
    client: TestClient,
    db,
    settings: Settings,
    email: str,
    role: str = "owner",
    *,
    account_name: str | None = None,
):
    """A session cookie for a (new) user; returns (user, account)."""
    user, account = accounts.create_user(db, email, NOW, account_name=account_name, role=role)
    token = auth.create_session(db, settings, user.id, account.id, NOW)
    client.cookies.set("session", token)
    return user, account


def csrf_headers(client: TestClient) -> dict[str, str]:
    """The CSRF cookie's value as the header the JSON API wants from cookie sessions."""
    if not client.cookies.get("csrf"):
        client.get("/settings/persona")  # a safe request to a page sets the cookie
    return {"X-CSRFToken": client.cookies.get("csrf")}


def bearer(db, user, account, scope: str = "manage", name: str = "t") -> dict[str, str]:
    _, secret = auth.create_key(
        db, user_id=user.id, account_id=account.id, name=name, scope=scope, now=NOW
    )
    return {"Authorization": f"Bearer {secret}"}


def docx_bytes(
    paragraphs: list[str] | None = None,
    *,
    extra: dict[str, bytes] | None = None,
    document: bytes | None = None,
) -> bytes:
    """A minimal Word document (``[Content_Types].xml`` + ``word/document.xml``)."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    if document is None:
        body = "".join(
            f'<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'
            for text in paragraphs or []
        )
        document = (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f'<w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>'
        ).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"/>',
        )
        archive.writestr("word/document.xml", document)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def open_database(settings: Settings):
    return open_db(settings)
