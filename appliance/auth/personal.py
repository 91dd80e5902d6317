"""What the auth domain holds about people (``appliance.personal``), and its purges."""

from __future__ import annotations

from datetime import datetime, timedelta

from appliance import personal
from appliance.clock import iso
from appliance.config import Settings
from appliance.personal import BY_ACCOUNT, BY_USER, EMAILS, ERASE, Table

TABLES = (
    Table("api_keys", BY_ACCOUNT, BY_USER, ERASE, True, ("key_hash",), "metadata only in exports"),
    Table("sessions", BY_ACCOUNT, BY_USER, ERASE, False, hidden=("id_hash",)),
    Table("otp_codes", None, f"email in {EMAILS}", ERASE, False, ("attempt_hash", "code_mac")),
)


export, erase = personal.plain(TABLES)


def purge_auth_events(db, settings: Settings, now: datetime, budget, on_batch):
    """Throttle and lock events (keyed by HMACs) past the log retention."""
    cutoff = iso(personal.log_cutoff(settings, now))
    return personal.batched_delete(
        db, "auth_events", "at < ?", [cutoff], settings, budget, on_batch
    )


def purge_signin_codes(db, settings: Settings, now: datetime, budget, on_batch):
    """Sign-in codes past their expiry."""
    return personal.batched_delete(
        db, "otp_codes", "expires_at < ?", [iso(now)], settings, budget, on_batch
    )


def purge_sessions(db, settings: Settings, now: datetime, budget, on_batch):
    """Sessions expired, revoked or idle too long."""
    idle = now - timedelta(minutes=settings.auth.session_idle_minutes)
    where = "expires_at < ? or revoked_at is not null or last_seen_at < ?"
    return personal.batched_delete(
        db, "sessions", where, [iso(now), iso(idle)], settings, budget, on_batch
    )


PURGES: dict[str, personal.Purge] = {
    "auth_events": purge_auth_events,
    "signin_codes": purge_signin_codes,
    "sessions": purge_sessions,
}
