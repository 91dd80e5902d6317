"""Fixtures of the privacy tests."""

import io
import logging

import pytest

from appliance.privacy import logs


@pytest.fixture
def production_logs():
    """Logging exactly as every service configures it (JSON lines, redaction), at DEBUG,
    into a buffer the test reads; the previous configuration is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    buffer = io.StringIO()
    handler = logs.configure("debug", buffer)
    yield buffer
    root.removeHandler(handler)
    for old in saved[0]:
        root.addHandler(old)
    root.setLevel(saved[1])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
