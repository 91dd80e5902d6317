"""What the accounts domain holds about people (``appliance.personal``)."""

from __future__ import annotations

from datetime import datetime

from appliance import personal
from appliance.clock import iso
from appliance.config import Settings
from appliance.personal import BY_ACCOUNT, BY_USER, ERASE, TOMBSTONE, USERS, Table

#: In erasure order; the account row itself is overwritten last, by the erasure
#: (``service.tombstone``), together with its receipt.
TABLES = (
    Table("profiles", BY_ACCOUNT, None, ERASE, True, note="onboarding answers"),
    Table("invites", BY_ACCOUNT, None, ERASE, True),
    Table("memberships", BY_ACCOUNT, BY_USER, ERASE, True),
    Table("users", None, f"id in {USERS}", ERASE, True, note="people with no other account"),
    Table("accounts", "id = :account", None, TOMBSTONE, True, note="name overwritten"),
)


export, erase = personal.plain(TABLES)


def purge_invites(db, settings: Settings, now: datetime, budget, on_batch) -> tuple[int, bool]:
    """Invites that expired, were withdrawn or declined."""
    where = "expires_at < ? or revoked_at is not null or declined_at is not null"
    return personal.batched_delete(db, "invites", where, [iso(now)], settings, budget, on_batch)


PURGES: dict[str, personal.Purge] = {"invites": purge_invites}
