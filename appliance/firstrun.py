"""First-run setup: a one-time link that lets the first person claim the appliance.

``appliance init`` (and ``up``) create a random setup token while nobody has claimed the
install and print ``/setup?token=…``. The page checks the token in constant time and
records the email of the first operator; the token is then destroyed.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from datetime import UTC, datetime

import sqlite_utils

from appliance import personal, vault
from appliance.accounts import service as accounts
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, NotFound

TOKEN_NAME = "setup_token"  # noqa: S105 - a file name, not a secret


# This module's migrations: each function mNNN_…, applied once in number order (appliance.db).
def m001_create_setup_claims(db: sqlite_utils.Database) -> None:
    db["setup_claims"].create(
        {"id": int, "email": str, "claimed_at": str},
        pk="id",
    )


def is_claimed(db: sqlite_utils.Database) -> bool:
    """Claimed through the setup link, or an operator was created with the CLI."""
    return db["setup_claims"].count > 0 or any(user.operator for user in accounts.users(db))


def setup_token(settings: Settings, db: sqlite_utils.Database) -> str | None:
    """The setup token while the install is unclaimed (created on first call), else None."""
    if is_claimed(db):
        vault.remove_secret(settings, TOKEN_NAME)
        return None
    path = settings.paths.secrets / TOKEN_NAME
    vault.write_secret(path, secrets.token_urlsafe(24), overwrite=False)
    return vault.read_secret(settings, TOKEN_NAME)


def setup_url(settings: Settings, token: str) -> str:
    return f"{settings.public_url}/setup?token={token}"


def check_token(settings: Settings, db: sqlite_utils.Database, token: str) -> None:
    """Raise NotFound unless ``token`` is the current setup token."""
    expected = None
    if not is_claimed(db):
        with contextlib.suppress(Exception):
            expected = vault.read_secret(settings, TOKEN_NAME)
    if not expected or not hmac.compare_digest(expected.encode(), token.encode()):
        raise NotFound("This setup link is not valid (it may have been used already).")


def claim(settings: Settings, db: sqlite_utils.Database, token: str, email: str) -> str:
    """Create the first operator and their account, and destroy the token.

    Returns the normalised email, which can then sign in.

    Raises:
        NotFound: the token is wrong or already used.
        InvalidInput: the email address is not plausible.
        Conflict: someone claimed the install in the meantime.
    """
    check_token(settings, db, token)
    email = accounts.normalise_email(email)
    now = datetime.now(UTC)
    with write_transaction(db):
        if is_claimed(db):
            raise Conflict("This appliance has already been set up.")
        db["setup_claims"].insert({"email": email, "claimed_at": now.isoformat()})
        accounts.create_user(db, email, now, role="owner", operator=True)
    vault.remove_secret(settings, TOKEN_NAME)
    return email


# -- personal data (appliance.personal) -------------------------------------------------

TABLES = (
    personal.Table("setup_claims", None, f"email in {personal.EMAILS}", personal.ERASE, True),
)
PURGES: dict[str, personal.Purge] = {}


export, erase = personal.plain(TABLES)
