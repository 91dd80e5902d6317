"""What the instances domain holds of an account (``appliance.personal``)."""

from __future__ import annotations

from appliance import personal
from appliance.personal import BY_ACCOUNT, ERASE, Table

TABLES = (Table("instances", BY_ACCOUNT, None, ERASE, True),)
PURGES: dict[str, personal.Purge] = {}


export, erase = personal.plain(TABLES)
