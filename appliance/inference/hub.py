"""Downloads from the Hugging Face hub, through ``huggingface_hub`` (the library
llama-cpp-python's ``from_pretrained`` uses).

huggingface_hub reads its own environment: ``HF_ENDPOINT`` (a mirror, or the tests' local
stand-in), ``HF_TOKEN`` (gated models), ``HF_HOME`` / ``HF_XET_CACHE``, ``HF_HUB_OFFLINE``.
The file is first resolved to a commit and the SHA-256 the hub publishes for it (its LFS
metadata), then downloaded into a staging folder inside the models directory, hashed, and
moved into place only when every SHA-256 agrees.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from appliance.config import Settings
from appliance.errors import ApplianceError, InvalidInput, NotFound, Unavailable
from appliance.inference import models
from appliance.inference.pull import finish, prepare

STAGING = ".hub-download"


def pull(
    settings: Settings,
    repo: str,
    file: str,
    revision: str,
    *,
    sha256: str,
    model_id: str | None,
    kind: models.Kind,
    license: str,
    make_default: bool,
    progress: bool,
) -> models.Model:
    """Download ``file`` of ``repo`` at ``revision``, verify and register it.

    ``sha256``, when given (the catalog's, or ``--sha256``), must also match what the hub
    publishes. Raises InvalidInput on any mismatch (nothing is kept), NotFound for a
    missing repository, revision or file, Unavailable when the hub cannot be reached.
    """
    import huggingface_hub

    name = PurePosixPath(file).name
    registry, target, model_id = prepare(settings, name, model_id)
    spec = f"hf:{repo}/{file}@{revision}"
    url = huggingface_hub.hf_hub_url(repo, file, revision=revision)
    with _hub_errors(spec):
        meta = huggingface_hub.get_hf_file_metadata(url)
    published = (meta.etag or "").lower()
    if not models.SHA256_RE.match(published):
        raise InvalidInput(
            f"the hub publishes no SHA-256 for {spec} (not an LFS file), so it cannot be "
            "verified: download it yourself and pull its URL with --sha256"
        )
    if sha256 and sha256 != published:
        raise InvalidInput(
            f"the hub publishes SHA-256 {published} for {spec}, but {sha256} is expected: "
            "nothing was downloaded"
        )
    commit = meta.commit_hash or revision
    staging = registry.directory / STAGING / model_id
    try:
        with _hub_errors(spec):
            # Pin the commit the metadata came from, so the bytes are the ones it describes.
            downloaded = huggingface_hub.hf_hub_download(
                repo,
                file,
                revision=commit,
                local_dir=staging,
                tqdm_class=None if progress else _silent_tqdm(),
            )
        return finish(
            registry,
            Path(downloaded),
            target,
            model_id,
            expected=published,
            kind=kind,
            license=license,
            source=f"hf:{repo}/{file}@{commit}",
            make_default=make_default,
            mismatch=f" for {spec} (the hub's LFS SHA-256)",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with suppress(OSError):  # the staging folder, once empty
            staging.parent.rmdir()


@contextmanager
def _hub_errors(spec: str) -> Iterator[None]:
    """huggingface_hub's and the network's errors as the appliance's, with what to do."""
    import httpx2
    from huggingface_hub import errors

    try:
        yield
    except ApplianceError:
        raise
    except errors.GatedRepoError:
        raise InvalidInput(
            f"{spec} is a gated model: accept its terms on the hub, then set HF_TOKEN "
            "(a read token of that account) in the environment and pull again"
        ) from None
    except errors.RevisionNotFoundError:
        raise NotFound(f"{spec}: the hub has no such revision") from None
    except errors.RemoteEntryNotFoundError:
        raise NotFound(f"{spec}: the hub has no such file at that revision") from None
    except errors.RepositoryNotFoundError:
        raise NotFound(
            f"{spec}: no such repository on the hub (or it is private: set HF_TOKEN)"
        ) from None
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise Unavailable(f"{spec}: the hub answered HTTP {status}") from None
    except (httpx2.HTTPError, OSError) as error:
        raise Unavailable(
            f"cannot download {spec}: {type(error).__name__}: {error} (no internet? a mirror "
            "can be set with HF_ENDPOINT)"
        ) from None


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
