"""Onboarding: the team's answers (accounts' profile) and its first instance.

Saving or skipping the onboarding questions creates the team's first instance,
``assistant``, if it has none, so a new team can chat at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlite_utils import Database

from appliance.accounts import service as accounts
from appliance.accounts.models import Profile
from appliance.config import Settings
from appliance.errors import Conflict
from appliance.instances import service as instances


def save(
    db: Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    answers: dict[str, Any],
    now: datetime,
) -> Profile:
    """Save the answers (owners and admins), then make the first instance."""
    saved = accounts.save_profile(db, settings, account_id, actor_role, answers, now)
    first_instance(db, settings, account_id, actor_role, now)
    return saved


def skip(
    db: Database, settings: Settings, account_id: str, actor_role: str, now: datetime
) -> Profile:
    """Skip the questions (owners and admins), then make the first instance."""
    skipped = accounts.skip_onboarding(db, account_id, actor_role, now)
    first_instance(db, settings, account_id, actor_role, now)
    return skipped


def first_instance(
    db: Database, settings: Settings, account_id: str, actor_role: str, now: datetime
) -> instances.Instance | None:
    """The team's first instance, ``assistant``, if it has none (``None`` otherwise, and
    when no chat model is installed)."""
    if instances.list_instances(db, account_id):
        return None
    limits = instances.limits(settings)
    if not limits["models"]:
        return None
    try:
        return instances.create(
            db, account_id, actor_role, {"name": "assistant"}, now=now, **limits
        )
    except Conflict:  # a concurrent onboarding made it first
        return None
