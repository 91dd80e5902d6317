"""One-time codes, sessions and API keys: the controls of docs/security.md's sign-in table.

Codes and session ids are stored only as an HMAC or a SHA-256, API keys (``apl_``) only
as a SHA-256; throttles and locks count events in SQLite, keyed by HMACs of the address
and of the client address, so every process shares them and neither is stored in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlite_utils import Database

from appliance import vault
from appliance.clock import iso, parse
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import InvalidInput, NotFound, Throttled
from appliance.ids import new_id

KEY_PREFIX = "apl_"
#: Scopes anyone may create through the API. ``admin`` (operator actions) has its own
#: function, ``create_admin_key``, which only the CLI calls.
SCOPES = ("inference", "manage")
ADMIN_SCOPE = "admin"
GENERIC_CODE_ERROR = "That code is not valid. Check it, or ask for a new one."
TOUCH_EVERY = timedelta(seconds=60)


class InvalidCode(InvalidInput):
    """Wrong, expired, used or locked: always the same message."""

    def __init__(self) -> None:
        super().__init__(GENERIC_CODE_ERROR)


@dataclass(frozen=True)
class CodeRequest:
    attempt_id: str
    code: str


@dataclass(frozen=True)
class Session:
    id_hash: str
    user_id: str
    account_id: str | None  # None: signed in, not a member of any account yet (invites)
    created_at: str
    expires_at: str


@dataclass(frozen=True)
class ApiKey:
    id: str
    prefix: str
    name: str
    scope: str
    account_id: str
    user_id: str
    instance_id: str | None
    created_at: str
    expires_at: str | None
    last_used_at: str | None = None
    revoked_at: str | None = None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _mac(settings: Settings, *parts: str) -> str:
    key = vault.read_secret(settings, "otp_key").encode()
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _count(db: Database, kind: str, subject: str, since: datetime) -> int:
    return db["auth_events"].count_where(
        "kind = ? and subject = ? and at > ?", [kind, subject, iso(since)]
    )


def _event(db: Database, kind: str, subject: str, now: datetime) -> None:
    db["auth_events"].insert({"kind": kind, "subject": subject, "at": iso(now)})


def _subjects(settings: Settings, email: str, client: str) -> tuple[str, str]:
    return "email:" + _mac(settings, "email", email), "client:" + _mac(settings, "client", client)


def _locked(db: Database, settings: Settings, subject: str, now: datetime) -> bool:
    return _count(db, "lock", subject, now - timedelta(minutes=settings.auth.lock_minutes)) > 0


# -- codes ------------------------------------------------------------------------------


def request_code(
    db: Database,
    settings: Settings,
    email: str,
    client: str,
    now: datetime,
    *,
    replaces: str | None = None,
) -> CodeRequest:
    """Create a code for ``email`` (the caller mails it only if the address may sign in).

    The same work is done for every address, known or not. ``replaces`` is the attempt the
    browser held before: its code is void. Another browser's code stays valid, so asking
    for a code for someone else's address does not cancel the code in their mailbox.

    Raises:
        Throttled: too many codes for this address or from this client in the last hour.
    """
    cfg = settings.auth
    email_subject, client_subject = _subjects(settings, email, client)
    hour_ago = now - timedelta(hours=1)
    attempt_id = secrets.token_urlsafe(32)
    code = f"{secrets.randbelow(10**6):06d}"
    with write_transaction(db):
        if (
            _count(db, "code_sent", client_subject, hour_ago) >= cfg.codes_per_client_per_hour
            or _count(db, "code_sent", email_subject, hour_ago) >= cfg.codes_per_address_per_hour
        ):
            raise Throttled("Too many sign-in codes requested. Try again later.", 900)
        _event(db, "code_sent", client_subject, now)
        _event(db, "code_sent", email_subject, now)
        if replaces:
            db.execute(
                "update otp_codes set voided_at = :now where attempt_hash = :attempt "
                "and used_at is null and voided_at is null",
                {"now": iso(now), "attempt": _sha256(replaces)},
            )
        attempt_hash = _sha256(attempt_id)
        mac = _mac(settings, attempt_hash, email, code)
        row = {"id": new_id("otp"), "attempt_hash": attempt_hash, "email": email, "code_mac": mac}
        expires = iso(now + timedelta(minutes=cfg.code_ttl_minutes))
        db["otp_codes"].insert({**row, "created_at": iso(now), "expires_at": expires})
    return CodeRequest(attempt_id, code)


def verify_code(
    db: Database,
    settings: Settings,
    attempt_id: str,
    email: str,
    code: str,
    client: str,
    now: datetime,
) -> None:
    """Accept the code once, or raise ``InvalidCode`` (one message for every failure).

    Every failure counts against the client address. It counts against the code and the
    email address only when a live code was sent to this attempt (the browser's cookie):
    someone who never received a code cannot void another person's code or lock their
    address, only their own client.
    """
    cfg = settings.auth
    email_subject, client_subject = _subjects(settings, email, client)
    code = (code or "").strip().replace(" ", "")
    attempt_hash = _sha256(attempt_id or "")
    with write_transaction(db):
        if _locked(db, settings, email_subject, now) or _locked(db, settings, client_subject, now):
            raise InvalidCode()
        found = db["otp_codes"].rows_where(
            "email = ? and attempt_hash = ? and used_at is null and voided_at is null "
            "and expires_at > ?",
            [email, attempt_hash, iso(now)],
            select="id, code_mac, failures",
        )
        row = next(found, None)
        codes = db.table("otp_codes")
        if (
            row is not None
            and len(code) == 6
            and code.isdigit()
            and hmac.compare_digest(row["code_mac"], _mac(settings, attempt_hash, email, code))
        ):
            codes.update(row["id"], {"used_at": iso(now)})
            return
        counted = [(client_subject, cfg.client_lock_failures)]
        if row is not None:
            failures = row["failures"] + 1
            voided = iso(now) if failures >= cfg.code_max_failures else None
            codes.update(row["id"], {"failures": failures, "voided_at": voided})
            counted.append((email_subject, cfg.account_lock_failures))
        hour_ago = now - timedelta(hours=1)
        for subject, limit in counted:
            _event(db, "code_failed", subject, now)
            if _count(db, "code_failed", subject, hour_ago) >= limit:
                _event(db, "lock", subject, now)
    raise InvalidCode()


# -- sessions ---------------------------------------------------------------------------


def create_session(
    db: Database,
    settings: Settings,
    user_id: str,
    account_id: str | None,
    now: datetime,
    *,
    replaces: str | None = None,
) -> str:
    """A new session; returns the token for the cookie. ``replaces`` is revoked.
    ``account_id`` None: the person has only open invites to answer so far."""
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(hours=settings.auth.session_absolute_hours)
    session = Session(_sha256(token), user_id, account_id, iso(now), iso(expires))
    with write_transaction(db):
        if replaces:
            revoke_session(db, replaces, now)
        db["sessions"].insert({**asdict(session), "last_seen_at": iso(now)})
    return token


def resolve_session(db: Database, settings: Settings, token: str, now: datetime) -> Session | None:
    """The live session for ``token``, touching its idle timer; None if ended."""
    if not token:
        return None
    id_hash = _sha256(token)
    row = next(db.query("select * from sessions where id_hash = :id", {"id": id_hash}), None)
    if row is None or row["revoked_at"] is not None:
        return None
    last_seen = parse(row["last_seen_at"])
    idle = timedelta(minutes=settings.auth.session_idle_minutes)
    if parse(row["expires_at"]) <= now or last_seen + idle <= now:
        _set_session(db, id_hash, revoked_at=iso(now))
        return None
    if now - last_seen >= TOUCH_EVERY:
        _set_session(db, id_hash, last_seen_at=iso(now))
    return Session(**{f.name: row[f.name] for f in fields(Session)})


def _set_session(db: Database, id_hash: str, **changes: str) -> None:
    with write_transaction(db):
        db["sessions"].update(id_hash, changes)


def switch_account(db: Database, session: Session, account_id: str) -> None:
    _set_session(db, session.id_hash, account_id=account_id)


#: What ``_revoke`` completes with a condition.
_SESSIONS = "update sessions set revoked_at = :now where"
_KEYS = "update api_keys set revoked_at = :now where"


def _revoke(db: Database, update: str, where: str, now: datetime, **params: str) -> int:
    """``update`` (``_SESSIONS`` or ``_KEYS``) the live rows ``where`` selects; how many."""
    with write_transaction(db):
        sql = f"{update} {where} and revoked_at is null"
        return db.execute(sql, {"now": iso(now), **params}).rowcount


def revoke_session(db: Database, token: str, now: datetime) -> None:
    _revoke(db, _SESSIONS, "id_hash = :id", now, id=_sha256(token))


def revoke_member_access(db: Database, account_id: str, user_id: str, now: datetime) -> None:
    """End a user's sessions in an account and revoke their keys there."""
    mine = "user_id = :user and account_id = :account"
    with write_transaction(db):
        for update in (_SESSIONS, _KEYS):
            _revoke(db, update, mine, now, user=user_id, account=account_id)


def revoke_account_sessions(db: Database, account_id: str, now: datetime) -> int:
    """End every session in an account (its suspension); returns how many were live."""
    return _revoke(db, _SESSIONS, "account_id = :account", now, account=account_id)


def revoke_account_access(db: Database, account_id: str, now: datetime) -> None:
    """End every session and revoke every key of an account (its erasure was requested)."""
    with write_transaction(db):
        for update in (_SESSIONS, _KEYS):
            _revoke(db, update, "account_id = :account", now, account=account_id)


def last_activity(db: Database, account_id: str) -> str | None:
    """When a session or an API key of the account was last used (ISO), or None."""
    found = db.query(
        """select max(at) as at from (
               select max(last_seen_at) as at from sessions where account_id = :account
               union all
               select max(last_used_at) from api_keys where account_id = :account)""",
        {"account": account_id},
    )
    return next(found)["at"]


def revoke_instance_keys(db: Database, account_id: str, instance_id: str, now: datetime) -> None:
    """Revoke every key bound to an instance (when it is destroyed)."""
    where = "instance_id = :instance and account_id = :account"
    _revoke(db, _KEYS, where, now, instance=instance_id, account=account_id)


# -- API keys ---------------------------------------------------------------------------


def create_key(
    db: Database,
    *,
    user_id: str,
    account_id: str,
    name: str,
    scope: str,
    now: datetime,
    instance_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key; returns its record and the secret, which is never shown again."""
    if scope not in SCOPES:
        raise InvalidInput("The scope must be 'inference' or 'manage'.")
    return _new_key(db, user_id, account_id, name, scope, now, instance_id, expires_at)


def create_admin_key(
    db: Database, *, user_id: str, account_id: str, name: str, now: datetime
) -> tuple[ApiKey, str]:
    """A key for the operator API (``/api/admin``) and nothing else.

    The caller (the CLI) checks that the user is a server operator: an operator's ordinary
    ``manage`` keys carry no operator powers.
    """
    return _new_key(db, user_id, account_id, name, ADMIN_SCOPE, now, None, None)


def _new_key(db, user_id, account_id, name, scope, now, instance_id, expires_at):
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise InvalidInput("The key name must be 1 to 100 characters.")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("The expiry must be in the future.")
    secret = KEY_PREFIX + secrets.token_urlsafe(24)
    expires = iso(expires_at) if expires_at else None
    key = ApiKey(
        new_id("key"), secret[:12], name, scope, account_id, user_id, instance_id, iso(now), expires
    )
    with write_transaction(db):
        db["api_keys"].insert({**asdict(key), "key_hash": _sha256(secret)})
    return key, secret


#: What a key's record holds (its hash stays in the table).
_KEY_COLUMNS = ", ".join(f.name for f in fields(ApiKey))


def _keys(db: Database, where: str, params: list) -> list[ApiKey]:
    # A query, not rows_where, which first reads the schema twice (a view? a table?):
    # every bearer request looks its key up. ``where`` is one of this module's clauses.
    sql = f"select {_KEY_COLUMNS} from api_keys where {where}"  # noqa: S608
    return [ApiKey(**row) for row in db.query(sql + " order by created_at desc", params)]


def list_keys(db: Database, account_id: str, user_id: str | None = None) -> list[ApiKey]:
    """Live keys of the account (of one user when ``user_id`` is given), newest first."""
    mine = " and user_id = ?" if user_id else ""
    live = "account_id = ? and revoked_at is null" + mine
    return _keys(db, live, [account_id, user_id] if user_id else [account_id])


def get_key(db: Database, account_id: str, key_id: str) -> ApiKey:
    found = _keys(db, "id = ? and account_id = ? and revoked_at is null", [key_id, account_id])
    if not found:
        raise NotFound("No such key.")
    return found[0]


def revoke_key(db: Database, account_id: str, key_id: str, now: datetime) -> None:
    with write_transaction(db):
        get_key(db, account_id, key_id)
        db["api_keys"].update(key_id, {"revoked_at": iso(now)})


def authenticate_key(db: Database, secret: str, now: datetime) -> ApiKey | None:
    """The live key for ``secret``, or None (unknown, revoked or expired)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 100:
        return None
    key = next(iter(_keys(db, "key_hash = ?", [_sha256(secret)])), None)
    if key is None or key.revoked_at or (key.expires_at and parse(key.expires_at) <= now):
        return None
    if not key.last_used_at or now - parse(key.last_used_at) >= TOUCH_EVERY:
        with write_transaction(db):
            db["api_keys"].update(key.id, {"last_used_at": iso(now)})
    return key
