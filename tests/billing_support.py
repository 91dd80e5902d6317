"""Fixtures for the billing tests: billing on, Stripe pointed at a local stand-in."""

from __future__ import annotations

import pytest
from conftest import make_settings
from stripe_standin import running

WEBHOOK_SECRET = "whsec_test_standin"
SECRET_KEY = "sk_test_standin"


@pytest.fixture
def stripe_standin():
    with running() as state:
        yield state


def billing_config(stripe_url: str, *, enabled: bool = True, **billing) -> str:
    lines = ["[billing]", f"enabled = {'true' if enabled else 'false'}"]
    lines += [
        f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
        for key, value in billing.items()
    ]
    lines += [
        "[stripe]",
        f'secret_key = "{SECRET_KEY}"',
        f'webhook_secret = "{WEBHOOK_SECRET}"',
        f'api_base = "{stripe_url}"',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def billed(settings, stripe_standin):
    """``settings`` with billing on and Stripe at the stand-in (also in appliance.toml, so
    child processes see it)."""
    config = settings.paths.data_dir / "appliance.toml"
    existing = config.read_text() if config.exists() else ""
    config.write_text(existing + billing_config(stripe_standin.url))
    return make_settings(settings.paths.data_dir)
