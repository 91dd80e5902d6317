"""Bench accounts for the scripts that call the web's ``/api`` or ``/v1`` with API keys: a
user and account with one running instance and keys, made straight in the database (as
the tests make them, ``tests.signin_support.api_key``)."""

from __future__ import annotations

from datetime import UTC, datetime

import common  # noqa: F401 (puts the checkout on sys.path, for ``tests``)

from appliance.accounts import service as accounts
from appliance.billing import service as billing
from appliance.config import Settings
from appliance.db import open_db
from appliance.inference.models import DEFAULT_CHAT
from appliance.instances import service as instances
from tests.signin_support import api_key


def bench_account(
    settings: Settings,
    name: str,
    instance: dict,
    scopes: tuple[str, ...] = ("inference",),
    credit_usd: int = 0,
) -> tuple[str, dict[str, str]]:
    """A new user ``NAME@bench.invalid`` in a new account ``NAME`` with one running instance
    (``instance``: its fields, on the bundled chat model), a key of each of ``scopes`` and,
    with ``credit_usd``, that much credit (an operator's adjustment). Returns the account's
    id and the keys' secrets by scope."""
    db = open_db(settings)
    try:
        now = datetime.now(UTC)
        user, account = accounts.create_user(db, f"{name}@bench.invalid", now, account_name=name)
        instances.create(
            db,
            account.id,
            "owner",
            instance,
            models=[DEFAULT_CHAT],
            max_tokens_cap=settings.inference.max_tokens,
            now=now,
        )
        keys = {scope: api_key(db, user, account, scope, now) for scope in scopes}
        if credit_usd:
            billing.adjust(db, account.id, credit_usd, "benchmark credit", now)
    finally:
        db.close()
    return account.id, keys
