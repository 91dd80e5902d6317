"""The data dir: its layout, secrets and database, created private to the service user."""

from __future__ import annotations

import sqlite_utils

from appliance import permissions, vault
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ConfigError


def open_initialised(settings: Settings) -> sqlite_utils.Database:
    """The database, after ``initialise`` (what every command that reads or writes uses;
    ``with open_initialised(settings) as db:`` closes it)."""
    initialise(settings)
    return open_db(settings)


def initialise(settings: Settings) -> None:
    """Create the data dir layout, secrets and database, all private to this user. Safe to
    run again."""
    root = settings.paths.data_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Every directory a systemd unit names (ReadOnlyPaths=, InaccessiblePaths=) exists
        # before the services start, so the unit's restriction applies to it.
        paths = settings.paths
        for path in (paths.files, paths.models, paths.outbox, paths.exports):
            path.mkdir(exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data dir {root} is not writable: {exc.strerror}") from None
    vault.ensure_secrets(settings)
    open_db(settings).close()
    # An install from before the data dir was private (0755 / 0644) becomes private here:
    # the installer runs init on every upgrade.
    permissions.make_private(root)
