"""Helpers for the audit regression tests: people signed in through the real API.

Imported by the test modules beside it (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import io
import zipfile


def export_zip(client) -> zipfile.ZipFile:
    """Start a data export (built at once by the immediate queue) and download it."""
    assert client.post("/api/me/export").status_code == 202
    status = client.get("/api/me/export").json()
    assert status["status"] == "ready", status
    download = client.get(status["download_url"])
    assert download.status_code == 200
    return zipfile.ZipFile(io.BytesIO(download.content))
