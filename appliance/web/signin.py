"""Sign-in by emailed one-time code: the JSON API and the /login pages, one flow."""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import sqlite_utils
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_202_ACCEPTED

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.auth import signin
from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import InvalidInput, NotFound, Throttled
from appliance.privacy import policy
from appliance.tasks import TaskQueue
from appliance.web import flash
from appliance.web.identity import Identity, client_address, cookie_names, local_path

SENT_MESSAGE = (
    "If this address can sign in here, a code is on its way. It is valid for {m} minutes."
)


def _attempt_cookie(attempt_id: str, email: str) -> str:
    return attempt_id + "." + base64.urlsafe_b64encode(email.encode()).decode().rstrip("=")


def _read_attempt(request: Request, settings: Settings) -> tuple[str, str]:
    value = request.cookies.get(cookie_names(settings)["signin"], "")
    attempt_id, _, encoded = value.partition(".")
    try:
        email = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        email = ""
    return attempt_id, email


def _set_cookie(response: Response, settings: Settings, name: str, value: str, max_age: int):
    response.set_cookie(
        cookie_names(settings)[name],
        value,
        max_age=max_age,
        path="/",
        secure=settings.public_url.startswith("https://"),
        httponly=True,
        samesite="lax",
    )


def set_session_cookie(response: Response, settings: Settings, token: str) -> None:
    """Sign the browser in with session ``token``."""
    _set_cookie(response, settings, "session", token, settings.auth.session_absolute_hours * 3600)


def _clear_cookie(response: Response, settings: Settings, name: str) -> None:
    response.delete_cookie(cookie_names(settings)[name], path="/")


def clear_session_cookie(response: Response, settings: Settings) -> Response:
    """Forget the browser's session (revoking it on the server is the caller's part)."""
    _clear_cookie(response, settings, "session")
    return response


def _start(
    request: Request, db, settings: Settings, queue: TaskQueue, clock: Clock, email: str
) -> str:
    """Send a code to ``email``; returns the value of the attempt's cookie (the browser
    that asked is the one that may answer)."""
    attempt = signin.start(
        db,
        settings,
        queue.send_signin_code,
        email,
        client_address(request),
        clock(),
        replaces=_read_attempt(request, settings)[0],
    )
    return _attempt_cookie(attempt, accounts.normalise_email(email))


def _with_attempt(response: Response, settings: Settings, attempt: str) -> Response:
    _set_cookie(response, settings, "signin", attempt, settings.auth.code_ttl_minutes * 60)
    return response


def _finish(request: Request, db, settings: Settings, clock: Clock, email: str, code: str):
    """Check the code of the browser's attempt; returns (session token, user, account)."""
    return signin.finish(
        db,
        settings,
        _read_attempt(request, settings)[0],
        email,
        code,
        client_address(request),
        clock(),
        replaces=request.cookies.get(cookie_names(settings)["session"]),
    )


def _signed_in(response: Response, settings: Settings, token: str) -> Response:
    set_session_cookie(response, settings, token)
    _clear_cookie(response, settings, "signin")
    return response


def _sign_out(request: Request, db, settings: Settings, clock: Clock, response: Response):
    """Revoke the browser's session on the server, not only forget it."""
    token = request.cookies.get(cookie_names(settings)["session"])
    if token:
        auth.revoke_session(db, token, clock())
    return clear_session_cookie(response, settings)


def _landing(db, me_account_id: str, role: str, clock: Clock) -> str:
    if role in ("owner", "admin") and accounts.profile(db, me_account_id, clock()).pending:
        return "/onboarding"
    return "/"


class SignInApi(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/code", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def request_code(
        self,
        request: Request,
        data: JSONBody[dict[str, Any]],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Email a one-time sign-in code. 202 whether or not the address is known."""
        email = data.get("email") if isinstance(data, dict) else None
        if not isinstance(email, str):
            raise InvalidInput('Send {"email": "you@example.com"}.')
        attempt = _start(request, db, settings, queue, clock, email)
        message = SENT_MESSAGE.format(m=settings.auth.code_ttl_minutes)
        response = Response({"status": "sent", "message": message}, status_code=202)
        return _with_attempt(response, settings, attempt)

    @post("/session", status_code=200, sync_to_thread=True)
    def create_session(
        self,
        request: Request,
        data: JSONBody[dict[str, Any]],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Exchange the emailed code for a session cookie (same client that asked for it).

        The session is in the account the user used last. Open invites are listed, never
        accepted: the person accepts or declines each at ``/api/me/invites``."""
        if not isinstance(data, dict):
            raise auth.InvalidCode()
        email, code = str(data.get("email", "")), str(data.get("code", ""))
        token, user, account = _finish(request, db, settings, clock, email, code)
        response = Response(
            {
                "user": {"id": user.id, "email": user.email},
                # None: only open invites so far (answer them at /api/me/invites).
                "account": {"id": account.id, "name": account.name} if account else None,
                "invites": [asdict(o) for o in accounts.invited(db, user, clock())],
            }
        )
        return _signed_in(response, settings, token)

    @delete("/session", status_code=200, sync_to_thread=True)
    def end_session(
        self,
        request: Request,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """Sign out: the session is revoked on the server, not only forgotten."""
        return _sign_out(request, db, settings, clock, Response({"status": "signed out"}))


class MeApi(Controller):
    path = "/api/me"
    tags = ["auth"]

    @get("/", sync_to_thread=True)
    def me(
        self,
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
        clock: NamedDependency[Clock],
    ) -> dict:
        """The signed-in user, the current account, every account they belong to and
        their open invites."""
        return {
            "user": {"id": me.user.id, "email": me.user.email, "operator": me.user.operator},
            "account": {"id": me.account.id, "name": me.account.name, "role": me.role},
            "accounts": [
                {"id": account.id, "name": account.name, "role": role}
                for account, role in accounts.accounts_of(db, me.user.id)
            ],
            "invites": [asdict(o) for o in accounts.invited(db, me.user, clock())],
        }

    @put("/account", sync_to_thread=True)
    def switch(
        self,
        data: JSONBody[dict[str, Any]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> dict:
        """Switch the session to another account the user belongs to."""
        account_id = data.get("account_id") if isinstance(data, dict) else None
        switch_account(db, me, str(account_id or ""))
        return {"account_id": account_id}


def switch_account(db: sqlite_utils.Database, me: Identity, account_id: str) -> None:
    if me.session is None:
        raise InvalidInput("Only a browser session can switch accounts.")
    if accounts.role_in(db, account_id, me.user.id) is None:
        raise NotFound("No such account.")
    auth.switch_account(db, me.session, account_id)
    accounts.used_account(db, me.user.id, account_id)


class SignInPages(Controller):
    include_in_schema = False

    @get("/login", sync_to_thread=False)
    def login_form(self, next: FromQuery[str] = "/") -> Template:
        return Template("login.html", context={"next": local_path(next), "email": ""})

    @post("/login", sync_to_thread=True)
    def login_submit(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        queue: NamedDependency[TaskQueue],
        clock: NamedDependency[Clock],
    ) -> Response:
        email = data.get("email", "")
        target = local_path(data.get("next"))
        try:
            attempt = _start(request, db, settings, queue, clock, email)
        except (InvalidInput, Throttled) as exc:
            return Template(
                "login.html",
                context={"next": target, "email": email, "flashes": [("error", str(exc))]},
                status_code=429 if isinstance(exc, Throttled) else 400,
            )
        return _with_attempt(Redirect(f"/login/verify?next={target}"), settings, attempt)

    @get("/login/verify", sync_to_thread=False)
    def verify_form(
        self, request: Request, settings: NamedDependency[Settings], next: FromQuery[str] = "/"
    ) -> Response:
        _, email = _read_attempt(request, settings)
        if not email:
            return Redirect("/login")
        minutes = settings.auth.code_ttl_minutes
        return Template(
            "login_verify.html",
            context={"email": email, "next": local_path(next), "minutes": minutes},
        )

    @post("/login/verify", sync_to_thread=True)
    def verify_submit(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        _, email = _read_attempt(request, settings)
        target = local_path(data.get("next"))
        try:
            token, user, account = _finish(
                request, db, settings, clock, email, data.get("code", "")
            )
        except auth.InvalidCode as exc:
            return Template(
                "login_verify.html",
                context={
                    "email": email,
                    "next": target,
                    "minutes": settings.auth.code_ttl_minutes,
                    "flashes": [("error", str(exc))],
                },
                status_code=400,
            )
        if account is None or accounts.invited(db, user, clock()):
            landing = "/invites"  # the person answers their invites first
        else:
            role = accounts.role_in(db, account.id, user.id) or "member"
            landing = _landing(db, account.id, role, clock)
        landing = landing if target == "/" else target
        if policy.pending(db, user.id, clock()) is not None:
            # A changed privacy policy took effect: show it and record acceptance first.
            landing = "/privacy/accept?next=" + quote(landing, safe="/")
        return _signed_in(Redirect(landing), settings, token)

    @post("/logout", sync_to_thread=True)
    def logout(
        self,
        request: Request,
        db: NamedDependency[sqlite_utils.Database],
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        response = flash.redirect(request, "/login", "You are signed out.")
        return _sign_out(request, db, settings, clock, response)

    @post("/account/switch", sync_to_thread=True)
    def switch(
        self,
        request: Request,
        data: URLEncodedBody[dict[str, str]],
        me: NamedDependency[Identity],
        db: NamedDependency[sqlite_utils.Database],
    ) -> Redirect:
        account_id = data.get("account_id", "")
        switch_account(db, me, account_id)
        name = accounts.account(db, account_id).name
        return flash.redirect(request, "/", f"You are now working in {name}.")
