"""What the instances domain holds of an account (``appliance.personal``)."""

from __future__ import annotations

import sqlite_utils

from appliance import personal
from appliance.config import Settings
from appliance.personal import ERASE, Table

TABLES = (Table("instances", "account_id = :account", None, ERASE, True),)
PURGES: dict[str, personal.Purge] = {}


def export(db: sqlite_utils.Database, settings: Settings, scope: personal.Scope) -> personal.Held:
    return personal.held(db, TABLES, scope)


def erase(db: sqlite_utils.Database, settings: Settings, job: personal.Erasure) -> bool:
    return personal.erase_tables(db, TABLES, job)
