"""``appliance models pull``: install a GGUF model on a server that has internet.

``install`` takes a catalog name, ``hf:OWNER/REPO/FILE.gguf[@REVISION]`` (both downloaded
from the Hugging Face hub by ``hub.py``) or a URL. A URL download (``pull``) is resumable
(an interrupted download continues from its ``.partial`` file with an HTTP Range request)
and verified against the SHA-256 the operator gives. Nothing ever overwrites an installed
model, and a download that does not match its checksum is deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from appliance.config import Settings
from appliance.errors import Conflict, InvalidInput
from appliance.inference import models

CHUNK = 1 << 20
HF_RE = re.compile(
    r"^hf:(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/(?P<file>[^@]+\.gguf)"
    r"(?:@(?P<revision>[\w./-]+))?$"
)


def install(
    settings: Settings,
    spec: str,
    *,
    sha256: str = "",
    model_id: str | None = None,
    kind: models.Kind | None = None,
    license: str | None = None,
    make_default: bool = False,
    progress: bool = True,
) -> models.Model:
    """Install the model ``spec`` names: a catalog name, ``hf:...`` or an http(s) URL."""
    from appliance.inference import catalog, hub

    sha256 = normalise_sha256(sha256) if sha256 else ""
    options: dict[str, Any] = {"make_default": make_default, "progress": progress}
    if "://" in spec:
        if not sha256:
            raise InvalidInput(
                "a URL outside the Hugging Face hub needs --sha256 (the file's expected "
                "SHA-256); for a file on the hub use hf:OWNER/REPO/FILE.gguf"
            )
        options["license"] = license or "see the model card"
        kind = kind or "chat"
        return pull(settings, spec, sha256=sha256, model_id=model_id, kind=kind, **options)
    if spec.startswith("hf:"):
        match = HF_RE.match(spec)
        if not match or ".." in match["file"].split("/"):
            raise InvalidInput(
                f"'{spec}' is not a hub file: use hf:OWNER/REPO/FILE.gguf or "
                "hf:OWNER/REPO/FILE.gguf@REVISION"
            )
        repo, file, revision = match["repo"], match["file"], match["revision"] or "main"
        license = license or f"see the model card: https://huggingface.co/{repo}"
        kind = kind or "chat"
    else:
        entry = catalog.get(settings, spec)
        if kind and kind != entry.kind:
            raise InvalidInput(f"'{entry.name}' is a {entry.kind} model, not a {kind} model")
        if sha256 and entry.sha256 and sha256 != entry.sha256:
            raise InvalidInput(f"--sha256 differs from the catalog's SHA-256 for '{entry.name}'")
        repo, file, revision, kind = entry.repo, entry.file, entry.revision, entry.kind
        sha256, model_id = sha256 or entry.sha256, model_id or entry.name
        license = license or entry.license
    options.update(sha256=sha256, model_id=model_id, kind=kind, license=license)
    return hub.pull(settings, repo, file, revision, **options)


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
) -> models.Model:
    """Download ``url`` into the models dir, verify it and register it.

    Raises:
        InvalidInput: bad URL, checksum format, or the download does not match.
        Conflict: a model with this id or file name is already installed.
    """
    sha256 = normalise_sha256(sha256)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidInput("the URL must be an http(s) URL of a .gguf file")
    name = Path(unquote(parts.path)).name
    if not name.endswith(".gguf") or name.startswith("."):
        raise InvalidInput("the URL must point at a .gguf file")
    registry, target, model_id = prepare(settings, name, model_id)
    partial = target.with_name(target.name + ".partial")

    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=15)) as http:
        _download(http, url, partial, progress=progress)
    return finish(
        registry,
        partial,
        target,
        model_id,
        expected=sha256,
        kind=kind,
        license=license,
        source=url,
        make_default=make_default,
    )


def normalise_sha256(sha256: str) -> str:
    sha256 = sha256.strip().lower()
    if not models.SHA256_RE.match(sha256):
        raise InvalidInput("--sha256 must be 64 hexadecimal characters")
    return sha256


def prepare(
    settings: Settings, file_name: str, model_id: str | None
) -> tuple[models.Registry, Path, str]:
    """The registry, the file's place in the models dir and the model id; refuses before
    any download what would overwrite an installed model."""
    model_id = (model_id or file_name.removesuffix(".gguf")).lower()
    if not models.ID_RE.match(model_id):
        raise InvalidInput(f"model id '{model_id}' may use only a-z, 0-9, '.', '_' and '-'")
    registry = models.load_registry(settings)
    target = registry.directory / file_name
    if model_id in registry.models:
        raise Conflict(f"a model '{model_id}' is already installed; remove it first")
    if target.exists():
        raise Conflict(f"{target} already exists; remove the model that uses it first")
    registry.directory.mkdir(parents=True, exist_ok=True)
    return registry, target, model_id


def finish(
    registry: models.Registry,
    downloaded: Path,
    target: Path,
    model_id: str,
    *,
    expected: str,
    kind: models.Kind,
    license: str,
    source: str,
    make_default: bool,
    mismatch: str = "",
) -> models.Model:
    """Check the download's SHA-256, move it into place and register it.

    Raises:
        InvalidInput: the checksum differs (the download is deleted) or the file is no GGUF.
    """
    digest = models.sha256_file(downloaded)
    if digest != expected:
        downloaded.unlink()
        raise InvalidInput(
            f"checksum mismatch{mismatch}: expected {expected}, got {digest}; "
            "the download was deleted"
        )
    os.replace(downloaded, target)
    try:
        return models.register(
            registry,
            model_id,
            target,
            kind=kind,
            license=license,
            source=source,
            make_default=make_default,
        )
    except Exception:
        target.unlink(missing_ok=True)
        raise


def _download(http: httpx.Client, url: str, partial: Path, *, progress: bool) -> None:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
        # rich (a Litestar dependency) draws the bar only while it is started.
        bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        shown = bar if progress else contextlib.nullcontext()
        with shown, open(partial, "ab" if resumed else "wb") as handle:
            task = bar.add_task("download", total=total, completed=have)
            for block in response.iter_bytes(CHUNK):
                handle.write(block)
                bar.update(task, advance=len(block))
