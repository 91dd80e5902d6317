"""Sign-in by emailed one-time code: the JSON API and the /login pages, one flow."""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from urllib.parse import quote

import sqlite_utils
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_202_ACCEPTED

from appliance.accounts import service as accounts
from appliance.accounts.models import MANAGERS
from appliance.auth import service as auth
from appliance.auth import signin
from appliance.config import Settings
from appliance.errors import InvalidInput, NotFound, Throttled
from appliance.privacy import policy
from appliance.web.deps import Ctx, Deps, Form, Json, Member
from appliance.web.errors import form_error
from appliance.web.identity import Identity, client_address, cookie_names, local_path, set_cookie

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


def set_session_cookie(response: Response, settings: Settings, token: str) -> None:
    """Sign the browser in with session ``token``."""
    set_cookie(response, settings, "session", token, settings.auth.session_absolute_hours * 3600)


def clear_session_cookie(response: Response, settings: Settings) -> Response:
    """Forget the browser's session (revoking it on the server is the caller's part)."""
    response.delete_cookie(cookie_names(settings)["session"], path="/")
    return response


def _start(ctx: Ctx, email: str) -> str:
    """Send a code to ``email``; returns the value of the attempt's cookie (the browser
    that asked is the one that may answer)."""
    request, settings = ctx.request, ctx.settings
    previous, _ = _read_attempt(request, settings)
    send, address = ctx.queue.send_signin_code, client_address(request)
    attempt = signin.start(ctx.db, settings, send, email, address, ctx.now(), replaces=previous)
    return _attempt_cookie(attempt, accounts.normalise_email(email))


def _with_attempt(response: Response, settings: Settings, attempt: str) -> Response:
    set_cookie(response, settings, "signin", attempt, settings.auth.code_ttl_minutes * 60)
    return response


def _finish(ctx: Ctx, email: str, code: str):
    """Check the code of the browser's attempt; returns (session token, user, account)."""
    request, settings = ctx.request, ctx.settings
    attempt, _ = _read_attempt(request, settings)
    session = request.cookies.get(cookie_names(settings)["session"])
    address = client_address(request)
    return signin.finish(
        ctx.db, settings, attempt, email, code, address, ctx.now(), replaces=session
    )


def _signed_in(response: Response, settings: Settings, token: str) -> Response:
    set_session_cookie(response, settings, token)
    response.delete_cookie(cookie_names(settings)["signin"], path="/")
    return response


def _sign_out(ctx: Ctx, response: Response):
    """Revoke the browser's session on the server, not only forget it."""
    token = ctx.request.cookies.get(cookie_names(ctx.settings)["session"])
    if token:
        auth.revoke_session(ctx.db, token, ctx.now())
    return clear_session_cookie(response, ctx.settings)


class SignInApi(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/code", status_code=HTTP_202_ACCEPTED, sync_to_thread=True)
    def request_code(self, data: Json, ctx: Deps) -> Response:
        """Email a one-time sign-in code. 202 whether or not the address is known."""
        email = data.get("email")
        if not isinstance(email, str):
            raise InvalidInput('Send {"email": "you@example.com"}.')
        attempt = _start(ctx, email)
        message = SENT_MESSAGE.format(m=ctx.settings.auth.code_ttl_minutes)
        response = Response({"status": "sent", "message": message}, status_code=202)
        return _with_attempt(response, ctx.settings, attempt)

    @post("/session", status_code=200, sync_to_thread=True)
    def create_session(self, data: Json, ctx: Deps) -> Response:
        """Exchange the emailed code for a session cookie (same client that asked for it).

        The session is in the account the user used last. Open invites are listed, never
        accepted: the person accepts or declines each at ``/api/me/invites``."""
        token, user, account = _finish(ctx, str(data.get("email", "")), str(data.get("code", "")))
        response = Response(
            {
                "user": {"id": user.id, "email": user.email},
                # None: only open invites so far (answer them at /api/me/invites).
                "account": {"id": account.id, "name": account.name} if account else None,
                "invites": [asdict(o) for o in accounts.invited(ctx.db, user, ctx.now())],
            }
        )
        return _signed_in(response, ctx.settings, token)

    @delete("/session", status_code=200, sync_to_thread=True)
    def end_session(self, me: Member, ctx: Deps) -> Response:
        """Sign out: the session is revoked on the server, not only forgotten."""
        return _sign_out(ctx, Response({"status": "signed out"}))


class MeApi(Controller):
    path = "/api/me"
    tags = ["auth"]

    @get("/", sync_to_thread=True)
    def me(self, me: Member, ctx: Deps) -> dict:
        """The signed-in user, the current account, every account they belong to and
        their open invites."""
        return {
            "user": {"id": me.user.id, "email": me.user.email, "operator": me.user.operator},
            "account": {"id": me.account.id, "name": me.account.name, "role": me.role},
            "accounts": [
                {"id": account.id, "name": account.name, "role": role}
                for account, role in accounts.accounts_of(ctx.db, me.user.id)
            ],
            "invites": [asdict(o) for o in accounts.invited(ctx.db, me.user, ctx.now())],
        }

    @put("/account", sync_to_thread=True)
    def switch(self, data: Json, me: Member, ctx: Deps) -> dict:
        """Switch the session to another account the user belongs to."""
        account_id = data.get("account_id")
        switch_account(ctx.db, me, str(account_id or ""))
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
    def login_submit(self, data: Form, ctx: Deps) -> Response:
        email = data.get("email", "")
        target = local_path(data.get("next"))
        try:
            attempt = _start(ctx, email)
        except (InvalidInput, Throttled) as exc:
            page = form_error("login.html", {"next": target, "email": email}, exc)
            page.status_code = 429 if isinstance(exc, Throttled) else 400
            return page
        return _with_attempt(Redirect(f"/login/verify?next={target}"), ctx.settings, attempt)

    @get("/login/verify", sync_to_thread=False)
    def verify_form(
        self, request: Request, settings: NamedDependency[Settings], next: FromQuery[str] = "/"
    ) -> Response:
        _, email = _read_attempt(request, settings)
        if not email:
            return Redirect("/login")
        return Template("login_verify.html", context=_verify_context(settings, email, next))

    @post("/login/verify", sync_to_thread=True)
    def verify_submit(self, data: Form, ctx: Deps) -> Response:
        db, settings, now = ctx.db, ctx.settings, ctx.now
        _, email = _read_attempt(ctx.request, settings)
        target = local_path(data.get("next"))
        try:
            token, user, account = _finish(ctx, email, data.get("code", ""))
        except auth.InvalidCode as exc:
            return form_error("login_verify.html", _verify_context(settings, email, target), exc)
        if account is None or accounts.invited(db, user, now()):
            landing = "/invites"  # the person answers their invites first
        else:
            role = accounts.role_in(db, account.id, user.id) or "member"
            pending = role in MANAGERS and accounts.profile(db, account.id, now()).pending
            landing = "/onboarding" if pending else "/"
        landing = landing if target == "/" else target
        if policy.pending(db, user.id, now()) is not None:
            # A changed privacy policy took effect: show it and record acceptance first.
            landing = "/privacy/accept?next=" + quote(landing, safe="/")
        return _signed_in(Redirect(landing), settings, token)

    @post("/logout", sync_to_thread=True)
    def logout(self, ctx: Deps) -> Response:
        return _sign_out(ctx, ctx.redirect("/login", "You are signed out."))

    @post("/account/switch", sync_to_thread=True)
    def switch(self, data: Form, me: Member, ctx: Deps) -> Redirect:
        account_id = data.get("account_id", "")
        switch_account(ctx.db, me, account_id)
        name = accounts.account(ctx.db, account_id).name
        return ctx.redirect("/", f"You are now working in {name}.")


def _verify_context(settings: Settings, email: str, target: str) -> dict:
    minutes = settings.auth.code_ttl_minutes
    return {"email": email, "next": local_path(target), "minutes": minutes}
