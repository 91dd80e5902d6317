"""Secrets generated at ``appliance init`` into ``DATA_DIR/secrets/`` (mode 0600).

They are never committed, never logged, and never part of the settings object, so
printing settings cannot leak them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError

#: Secrets every install has: name → number of random bytes.
SECRETS = {
    "session_key": 32,  # signs session and CSRF cookies
    "otp_key": 32,  # HMAC key for stored one-time codes
    "inference_key": 32,  # bearer token between web/worker and the inference service
}


def ensure_secrets(settings: Settings) -> list[str]:
    """Create any missing secret; returns the names created. Existing ones are kept."""
    directory = settings.paths.secrets
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    created = []
    for name, size in SECRETS.items():
        if write_secret(directory / name, secrets.token_urlsafe(size), overwrite=False):
            created.append(name)
    return created


def read_secret(settings: Settings, name: str) -> str:
    """The secret's value.

    Raises:
        ConfigError: the secret file does not exist (``appliance init`` was not run).
    """
    path = settings.paths.secrets / name
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"secret '{name}' is missing in {path.parent}: run `appliance init` first"
        ) from None


def write_secret(path: Path, value: str, *, overwrite: bool) -> bool:
    """Write ``value`` to ``path`` with mode 0600; False when it exists and must be kept."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    os.chmod(path, 0o600)
    return True


def remove_secret(settings: Settings, name: str) -> None:
    (settings.paths.secrets / name).unlink(missing_ok=True)
