"""One-time messages across a form's redirect (POST-redirect-GET).

A page handler that changed something answers ``flash.redirect(request, url, message)``:
the message travels in a signed cookie that lives a minute at most; the next page the
base layout renders shows it once (``flash(request)`` in templates) and the response that
carried it deletes the cookie, so a reload shows the page without it and never repeats
the POST. A new API key rides along the same way (``extra``) so that it is shown once,
without the form being submitted again by a reload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.response import Redirect
from litestar.types import Message, Scope

from appliance import vault
from appliance.config import Settings
from appliance.web.identity import cookie_names, set_cookie

NAME = "flash"
MAX_AGE_SECONDS = 60
_SHOWN = "appliance.flash_shown"


def _key(settings: Settings) -> bytes:
    return hashlib.sha256(b"flash:" + vault.read_secret(settings, "session_key").encode()).digest()


def _sign(settings: Settings, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(_key(settings), body, hashlib.sha256).hexdigest()
    return body.decode() + "." + mac


def _verify(settings: Settings, value: str) -> dict[str, Any] | None:
    body, _, mac = value.rpartition(".")
    expected = hmac.new(_key(settings), body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(expected, mac):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("at"), int):
        return None
    # The browser drops the cookie after a minute; a copy replayed later is refused too.
    return payload if 0 <= time.time() - payload["at"] <= MAX_AGE_SECONDS else None


def redirect(request: Request, url: str, message: str, level: str = "ok", **extra: Any) -> Redirect:
    """A 303 to ``url`` that shows ``message`` once on the page it lands on."""
    settings: Settings = request.app.state.settings
    payload = {"flashes": [[level, message]], "at": int(time.time()), **extra}
    response = Redirect(url, status_code=303)
    set_cookie(response, settings, NAME, _sign(settings, payload), MAX_AGE_SECONDS)
    return response


def flash(request: Request) -> dict[str, Any]:
    """Template helper: the message(s) carried to this page, once (``{}`` if none)."""
    cached = getattr(request.state, "flash", None)
    if cached is not None:
        return cached
    settings: Settings = request.app.state.settings
    value = request.cookies.get(cookie_names(settings)[NAME])
    payload = _verify(settings, value) if value else None
    request.state.flash = payload or {}
    if value:
        request.scope[_SHOWN] = True  # type: ignore[literal-required]
    return request.state.flash


async def clear_shown(message: Message, scope: Scope) -> None:
    """``before_send`` hook: the page that showed the cookie's message deletes it."""
    if message["type"] == "http.response.start" and scope.get(_SHOWN):
        settings: Settings = scope["app"].state.settings
        secure = "; Secure" if settings.public_url.startswith("https://") else ""
        name = cookie_names(settings)[NAME]
        headers = MutableScopeHeaders.from_message(message)
        headers.add("set-cookie", f"{name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}")
