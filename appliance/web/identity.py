"""Who is asking: a session cookie (browser) or a bearer API key (scripts), resolved into
an ``Identity``; what handlers declare to get it is in web/deps.py.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from types import SimpleNamespace

import sqlite_utils
from litestar import Request, Response
from litestar.exceptions import HTTPException

from appliance.accounts import service as accounts
from appliance.accounts.models import MANAGERS, Account, User
from appliance.auth import service as auth
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import InvalidInput, NotFound
from appliance.web.security import SAFE_METHODS


@dataclass(frozen=True)
class Identity:
    user: User
    account: Account
    role: str
    session: auth.Session | None = None
    key: auth.ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        """The API key the request came with (None for a browser session)."""
        return self.key.id if self.key else None

    @property
    def is_manager(self) -> bool:
        return self.role in MANAGERS

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"


@dataclass(frozen=True)
class Person:
    """Whoever a browser session belongs to, whether or not it is in an account yet."""

    user: User
    session: auth.Session


class LoginRequired(HTTPException):
    """A page needs a signed-in user: redirect to /login."""

    status_code = 303


def cookie_names(settings: Settings) -> dict[str, str]:
    """``__Host-`` cookies over HTTPS (they require Secure); plain names over HTTP."""
    prefix = "__Host-" if settings.public_url.startswith("https://") else ""
    return {name: prefix + name for name in ("session", "signin", "csrf", "flash")}


def set_cookie(response: Response, settings: Settings, name: str, value: str, max_age: int):
    """Set one of ``cookie_names``: HTTP-only, same-site lax, Secure over HTTPS."""
    response.set_cookie(
        cookie_names(settings)[name],
        value,
        max_age=max_age,
        path="/",
        secure=settings.public_url.startswith("https://"),
        httponly=True,
        samesite="lax",
    )


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def resolve(
    request: Request, db: sqlite_utils.Database, settings: Settings, clock: Clock
) -> Identity | None:
    """The identity of the request, from its bearer key or else its session cookie."""
    now = clock()
    if any(value.startswith(auth.KEY_PREFIX) for value in request.query_params.values()):
        raise InvalidInput("API keys are only accepted in the Authorization header.")
    secret = bearer(request)
    if secret is not None:
        key = auth.authenticate_key(db, secret, now)
        if key is None:
            return None
        return _member(db, key.user_id, key.account_id, key=key)
    token = request.cookies.get(cookie_names(settings)["session"])
    if not token:
        return None
    session = auth.resolve_session(db, settings, token, now)
    if session is None:
        return None
    if session.account_id is None:
        request.state.waiting = session  # signed in, in no account yet: invites only
        return None
    return _member(db, session.user_id, session.account_id, session=session)


def _member(db, user_id: str, account_id: str, **via) -> Identity | None:
    # Membership and account state are checked on every request, so removing a member
    # or suspending an account ends their sessions and keys at once.
    found = accounts.membership(db, account_id, user_id)
    if found is None:
        return None
    try:
        return Identity(accounts.user(db, user_id), *found, **via)
    except NotFound:
        return None


def identify(
    request: Request, db: sqlite_utils.Database, settings: Settings, clock: Clock
) -> Identity | None:
    """``resolve``, and the identity noted for the base layout's header."""
    identity = resolve(request, db, settings, clock)
    if identity is not None:
        # For the base layout's header (see current()).
        request.state.identity = identity
        request.state.accounts = (
            # A key acts in its own account only; a session may switch to the others.
            [(identity.account, identity.role)]
            if identity.key
            else accounts.accounts_of(db, identity.user.id)
        )
    return identity


def current(request: Request) -> SimpleNamespace | None:
    """Template helper: the identity this request resolved, with the user's accounts."""
    identity = getattr(request.state, "identity", None)
    if identity is None:
        return None
    return SimpleNamespace(identity=identity, accounts=request.state.accounts)


def waiting_person(request: Request, db: sqlite_utils.Database) -> Person | None:
    """The person of a live session that is in no account yet (only open invites)."""
    session = getattr(request.state, "waiting", None)
    if session is None:
        return None
    try:
        return Person(accounts.user(db, session.user_id), session)
    except NotFound:
        return None


def check_csrf(request: Request, settings: Settings) -> None:
    """A cookie-authenticated unsafe ``/api`` call must echo the CSRF cookie in a header."""
    if request.url.path.startswith("/api/") and request.method not in SAFE_METHODS:
        expected = request.cookies.get(cookie_names(settings)["csrf"], "")
        sent = request.headers.get("x-csrftoken", "")
        if not expected or not hmac.compare_digest(expected, sent):
            raise HTTPException(status_code=403, detail="CSRF token missing or wrong.")


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this site (a redirect there stays here), else ``/``."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def client_address(request: Request) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is a trusted
    # proxy (web.trusted_proxies); otherwise the header is ignored.
    return request.client.host if request.client else "unknown"
