"""Helpers for the privacy commands of ``appliance`` (argument parsing only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from appliance.errors import InvalidInput

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """``2h`` / ``30m`` / ``7d`` before ``now``, or an ISO date or date-time (UTC if naive)."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"--since must be a duration such as 2h or 7d, or an ISO date: {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
