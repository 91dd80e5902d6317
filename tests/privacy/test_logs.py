"""Content-free operational logs: the redaction filter, JSON lines, the request log and
``appliance logs``."""

import json
import logging
import subprocess
import sys

import pytest
from litestar.testing import TestClient
from privacy_support import populate
from signin_support import sign_in

from appliance.privacy import logs, requestlog
from appliance.privacy.logs import redact

FAKE_ANTHROPIC_KEY = "-".join(("sk", "ant", "api03", "abcdefghijklmnop"))

SECRETS = [
    ("sign-in for alice.smith+test@example.co.uk failed", "alice.smith+test@example.co.uk"),
    ("key apl_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA used", "apl_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"),
    ("Authorization: Bearer abc.def-ghi_123", "abc.def-ghi_123"),
    ("Cookie: session=s3cr3tv4lu3; csrf=xyz", "s3cr3tv4lu3"),
    ("open /setup?token=Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODk", "Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODk"),
    ("your code is 482913", "482913"),
    ("card 4242 4242 4242 4242 declined", "4242 4242 4242 4242"),
    ("card 4000-0566-5566-5556 declined", "4000-0566-5566-5556"),
    # Assembled here so that the repository holds nothing shaped like a real key.
    (f"anthropic key {FAKE_ANTHROPIC_KEY}", FAKE_ANTHROPIC_KEY),
    (
        "session id 3f9a1c0b7d2e4f6a8b9c0d1e2f3a4b5c6d7e8f9a",
        "3f9a1c0b7d2e4f6a8b9c0d1e2f3a4b5c6d7e8f9a",
    ),
]


@pytest.mark.parametrize(("line", "secret"), SECRETS)
def test_redaction_removes_secrets(line, secret):
    assert secret not in redact(line)


def test_redaction_keeps_what_operators_need():
    line = "GET /api/documents/{document_id:str} 404 in 3.2 ms on port 8000, pid 4123"
    assert redact(line) == line
    task = "Executing appliance.tasks.send_mail: f34df725-7747-4432-b1a6-56086c03cd87"
    assert redact(task) == task


def test_every_record_is_redacted_json(production_logs):
    log = logging.getLogger("appliance.test")
    log.warning("mail to %s with code %s", "bob@example.com", "123456")
    try:
        raise ValueError("bad key apl_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA")
    except ValueError:
        log.exception("failed for carol@example.com")
    lines = [json.loads(x) for x in production_logs.getvalue().splitlines()]
    assert [x["level"] for x in lines] == ["warning", "error"]
    text = production_logs.getvalue()
    for secret in ("bob@example.com", "123456", "carol@example.com", "apl_Zm9v"):
        assert secret not in text
    assert "ValueError" in lines[1]["exc"] and "<api-key>" in lines[1]["exc"]


def test_services_log_json_lines_to_stdout(settings):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from appliance.privacy import logs; import logging, sys;"
            "logs.configure('info', sys.stdout); logging.getLogger('x').info('hi a@b.example')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = json.loads(result.stdout)
    assert line["msg"] == "hi <email>" and line["logger"] == "x"


def test_request_log_has_templates_not_paths(settings, db, clock, app):
    world = populate(db, settings, clock(), "requestlogcanary")
    with TestClient(app) as client:
        sign_in(client, settings, "owner@example.com")
        doc = client.get(f"/api/documents/{world.document_id}?q=requestlogcanary")
        assert doc.status_code == 200
        assert client.get("/api/documents/doc_doesnotexist").status_code == 404
        assert client.get("/no/such/page").status_code == 404
    rows = requestlog.entries(db, limit=50)
    paths = {r.path for r in rows}
    assert "/api/documents/{document_id}" in paths
    assert "<unmatched>" in paths
    assert not any(world.document_id in r.path or "?" in r.path for r in rows)
    missing = next(r for r in rows if r.status == 404 and r.path.startswith("/api/documents"))
    assert missing.error == "NotFound" and missing.method == "GET" and missing.duration_ms > 0
    dump = json.dumps([r.__dict__ for r in rows])
    assert "requestlogcanary" not in dump and "owner@example.com" not in dump


def test_logs_command_filters(settings, db, clock, app):
    with TestClient(app) as client:
        client.get("/healthz")
        client.get("/no/such/page")
        client.get("/api/me")

    def run(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance",
                "logs",
                "--data-dir",
                str(settings.paths.data_dir),
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    every = [json.loads(x) for x in run().stdout.splitlines()]
    assert {r["path"] for r in every} >= {"/healthz", "<unmatched>", "/api/me"}
    errors = [json.loads(x) for x in run("--status", "4xx").stdout.splitlines()]
    assert {r["status"] for r in errors} == {401, 404}
    api = [json.loads(x) for x in run("--path", "/api/").stdout.splitlines()]
    assert [r["path"] for r in api] == ["/api/me"]
    later = run("--since", "2099-01-01")
    assert later.returncode == 0 and later.stdout == ""
    bad = run("--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_filter_is_installed_once_per_process():
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        handler = logs.configure("info")
        logs.configure("info")
        assert sum(isinstance(h.formatter, logs.JsonFormatter) for h in root.handlers) == 1
        assert any(isinstance(f, logs.RedactionFilter) for f in root.handlers[0].filters)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        del handler


def test_request_log_names_the_instance(settings, db, clock, app):
    world = populate(db, settings, clock(), "instancecanary")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {world.owner_key}"
        assert client.get(f"/api/instances/{world.instance.id}").status_code == 200
    (row,) = [r for r in requestlog.entries(db) if r.path.startswith("/api/instances/")]
    assert row.instance_id == world.instance.id
    assert world.instance.id not in row.path
