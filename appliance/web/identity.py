"""Who is asking: a session cookie (browser) or a bearer API key (scripts).

Handlers declare what they need as a dependency:

- ``identity``: ``Identity | None`` (anonymous allowed);
- ``me``: any signed-in member of an active account (pages redirect to /login, the JSON
  API answers 401). A cookie-authenticated unsafe ``/api`` request must also carry the
  CSRF cookie's value in the ``X-CSRFToken`` header; a bearer key needs scope ``manage``;
- ``manager``: ``me`` with the owner or admin role (others get 404);
- ``api_key``: a bearer key with scope ``inference`` (``/v1``; a cookie alone never works);
- ``person``: a signed-in browser session, in an account or not yet in any (someone with
  only open invites: ``/invites`` is all such a session reaches; other pages send it
  there). Same CSRF rule as ``me``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from types import SimpleNamespace

import sqlite_utils
from litestar import Request, Response
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotAuthorizedException

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
    role = accounts.role_in(db, account_id, user_id)
    if role is None:
        return None
    try:
        return Identity(accounts.user(db, user_id), accounts.account(db, account_id), role, **via)
    except NotFound:
        return None


def provide_identity(
    request: Request,
    db: NamedDependency[sqlite_utils.Database],
    settings: NamedDependency[Settings],
    clock: NamedDependency[Clock],
) -> Identity | None:
    identity = resolve(request, db, settings, clock)
    if identity is not None:
        # For the base layout's header (see current()).
        request.state.identity = identity
        request.state.accounts = accounts.accounts_of(db, identity.user.id)
    return identity


def current(request: Request) -> SimpleNamespace | None:
    """Template helper: the identity this request resolved, with the user's accounts."""
    identity = getattr(request.state, "identity", None)
    if identity is None:
        return None
    return SimpleNamespace(identity=identity, accounts=request.state.accounts)


def _waiting(request: Request, db: sqlite_utils.Database) -> Person | None:
    """The person of a live session that is in no account yet (only open invites)."""
    session = getattr(request.state, "waiting", None)
    if session is None:
        return None
    try:
        return Person(accounts.user(db, session.user_id), session)
    except NotFound:
        return None


def _check_csrf(request: Request, settings: Settings) -> None:
    """A cookie-authenticated unsafe ``/api`` call must echo the CSRF cookie in a header."""
    if request.url.path.startswith("/api/") and request.method not in SAFE_METHODS:
        expected = request.cookies.get(cookie_names(settings)["csrf"], "")
        sent = request.headers.get("x-csrftoken", "")
        if not expected or not hmac.compare_digest(expected, sent):
            raise HTTPException(status_code=403, detail="CSRF token missing or wrong.")


def provide_me(
    request: Request,
    identity: NamedDependency[Identity | None],
    settings: NamedDependency[Settings],
) -> Identity:
    path = request.url.path
    is_api = path.startswith("/api/")
    if identity is None:
        if is_api or path.startswith("/v1/"):
            raise NotAuthorizedException("Sign in, or send an API key with scope 'manage'.")
        if getattr(request.state, "waiting", None) is not None:
            raise LoginRequired(headers={"Location": "/invites"})
        raise LoginRequired(headers={"Location": "/login?next=" + local_path(path)})
    if identity.key is not None and identity.key.scope != "manage":
        raise NotAuthorizedException("This API key's scope does not allow this.")
    if identity.session is not None:
        _check_csrf(request, settings)
    return identity


def provide_person(
    request: Request,
    identity: NamedDependency[Identity | None],
    db: NamedDependency[sqlite_utils.Database],
    settings: NamedDependency[Settings],
) -> Person:
    if identity is not None and identity.session is not None:
        person: Person | None = Person(identity.user, identity.session)
    else:  # an API key cannot answer invites: the person does, signed in
        person = _waiting(request, db) if identity is None else None
    if person is None:
        if request.url.path.startswith("/api/"):
            raise NotAuthorizedException("Sign in first (invites are answered in a browser).")
        raise LoginRequired(headers={"Location": "/login?next=" + local_path(request.url.path)})
    _check_csrf(request, settings)
    request.state.person = person  # for the base layout's header
    return person


def provide_manager(me: NamedDependency[Identity]) -> Identity:
    if not me.is_manager:
        raise NotFound("Not found.")
    return me


def provide_api_key(identity: NamedDependency[Identity | None]) -> Identity:
    if identity is None or identity.key is None or identity.key.scope != "inference":
        raise NotAuthorizedException("Send an API key with scope 'inference' as a Bearer token.")
    return identity


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this site (a redirect there stays here), else ``/``."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def client_address(request: Request) -> str:
    # uvicorn has already replaced this with X-Forwarded-For when the peer is a trusted
    # proxy (web.trusted_proxies); otherwise the header is ignored.
    return request.client.host if request.client else "unknown"
