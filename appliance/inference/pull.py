"""``appliance models pull``: download a GGUF model on a server that has internet.

Resumable (an interrupted download continues from its ``.partial`` file with an HTTP
Range request), verified against the SHA-256 the operator gives, and it never
overwrites an installed model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput
from appliance.inference import models

CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


def pull(
    settings: Settings,
    url: str,
    *,
    sha256: str,
    model_id: str | None = None,
    kind: models.Kind = "chat",
    license: str = "see the model card",
    make_default: bool = False,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> models.Model:
    """Download ``url`` into the models dir, verify it and register it.

    Raises:
        InvalidInput: bad URL, checksum format, or the download does not match.
        Conflict: a model with this id or file name is already installed.
    """
    sha256 = sha256.strip().lower()
    if not SHA256_RE.match(sha256):
        raise InvalidInput("--sha256 must be 64 hexadecimal characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidInput("the URL must be an http(s) URL of a .gguf file")
    name = Path(unquote(parts.path)).name
    if not name.endswith(".gguf") or name.startswith("."):
        raise InvalidInput("the URL must point at a .gguf file")
    model_id = (model_id or name.removesuffix(".gguf")).lower()
    if not ID_RE.match(model_id):
        raise InvalidInput(f"model id '{model_id}' may use only a-z, 0-9, '.', '_' and '-'")

    registry = models.load_registry(settings)
    target = registry.directory / name
    if model_id in registry.models:
        raise Conflict(f"a model '{model_id}' is already installed; remove it first")
    if target.exists():
        raise Conflict(f"{target} already exists; remove the model that uses it first")
    registry.directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")

    own_client = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=15))
    try:
        _download(http, url, partial, progress=progress)
    finally:
        if own_client:
            http.close()

    digest = models.sha256_file(partial)
    if digest != sha256:
        partial.unlink()
        raise InvalidInput(
            f"checksum mismatch: expected {sha256}, got {digest}; the download was deleted"
        )
    os.replace(partial, target)
    try:
        return models.register(
            registry,
            model_id,
            target,
            kind=kind,
            license=license,
            source=url,
            make_default=make_default,
        )
    except Exception:
        target.unlink(missing_ok=True)
        raise


def _download(http: httpx.Client, url: str, partial: Path, *, progress: bool) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # already complete
            return
        if response.status_code not in (200, 206):
            raise InvalidInput(f"download failed: HTTP {response.status_code} from the server")
        resumed = response.status_code == 206
        if not resumed:
            have = 0
        length = response.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        bar = _Bar(total, have) if progress else None
        try:
            with open(partial, "ab" if resumed else "wb") as handle:
                for block in response.iter_bytes(CHUNK):
                    handle.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()


class _Bar:
    """A progress bar on stderr, from rich (a Litestar dependency)."""

    def __init__(self, total: int | None, done: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()
        )
        self._progress.start()
        self._task = self._progress.add_task("download", total=total, completed=done)

    def update(self, size: int) -> None:
        self._progress.update(self._task, advance=size)

    def close(self) -> None:
        self._progress.stop()
