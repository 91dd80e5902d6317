"""Sign-in from start to finish: the one flow behind both the JSON API and the pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlite_utils import Database

from appliance.accounts import service as accounts
from appliance.accounts.models import Account, User
from appliance.auth import service as auth
from appliance.config import Settings
from appliance.errors import InvalidInput, NotFound


def start(
    db: Database,
    settings: Settings,
    send_code: Callable[[str, str], object],
    email: str,
    client: str,
    now: datetime,
    *,
    replaces: str | None = None,
) -> str:
    """Create a code and queue its mail; returns the attempt id for the cookie.

    Known and unknown addresses take the same path: ``send_code(email, code)`` (the
    worker's ``send_signin_code`` task) decides whether the address may sign in and only
    then sends the mail. ``replaces``: the attempt id the browser held before (its code
    is void).

    Raises:
        InvalidInput: not an email address.
        Throttled: too many codes requested.
    """
    email = accounts.normalise_email(email)
    request = auth.request_code(db, settings, email, client, now, replaces=replaces)
    send_code(email, request.code)
    return request.attempt_id


def finish(
    db: Database,
    settings: Settings,
    attempt_id: str,
    email: str,
    code: str,
    client: str,
    now: datetime,
    *,
    replaces: str | None = None,
) -> tuple[str, User, Account | None]:
    """Check the code and open a session; returns (session token, user, account).

    The session is in the account the user used last; open invites are not accepted
    (the person answers them on /invites). Someone with only invites gets a session
    without an account (``account`` None), good for answering them and nothing else.

    Raises:
        InvalidCode: wrong, expired, used, locked, or the address may not sign in.
    """
    try:
        email = accounts.normalise_email(email)
    except InvalidInput:
        raise auth.InvalidCode() from None
    auth.verify_code(db, settings, attempt_id, email, code, client, now)
    try:
        user, account = accounts.complete_sign_in(db, settings, email, now)
    except NotFound:
        raise auth.InvalidCode() from None
    if account is None and not accounts.invited(db, user, now):
        raise auth.InvalidCode()
    account_id = account.id if account else None
    token = auth.create_session(db, settings, user.id, account_id, now, replaces=replaces)
    if account_id:
        accounts.used_account(db, user.id, account_id)
    return token, user, account
