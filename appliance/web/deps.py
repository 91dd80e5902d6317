"""What handlers take, as request-scoped dependencies.

A handler declares ``ctx: Deps`` (the database, settings, clock, task queue and, when it
asks for it, the inference client) next to its caller, and reads as: parse, call one
service, render. The caller, by the parameter's name (web/identity.py resolves it):

- ``identity``: ``Identity | None`` (anonymous allowed);
- ``me``: any signed-in member of an active account (pages redirect to /login, the JSON
  API answers 401). A cookie-authenticated unsafe ``/api`` request must also carry the
  CSRF cookie's value in the ``X-CSRFToken`` header; a bearer key needs scope ``manage``;
- ``manager``: ``me`` with the owner or admin role (others get 404);
- ``api_key``: a bearer key with scope ``inference`` (``/v1``; a cookie alone never works);
- ``person``: a signed-in browser session, in an account or not yet in any (someone with
  only open invites: ``/invites`` is all such a session reaches; other pages send it
  there). Same CSRF rule as ``me``.

Each provider takes one other dependency (``ctx`` takes the database; ``identity``
takes ``ctx``), so Litestar resolves them one after another: providers side by side are
run as tasks of a task group, which cost a request over a millisecond on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import sqlite_utils
from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.params import JSONBody, URLEncodedBody
from litestar.response import Redirect

from appliance.clock import Clock
from appliance.config import Settings
from appliance.errors import NotFound
from appliance.inference.client import InferenceClient
from appliance.tasks import TaskQueue
from appliance.web import flash
from appliance.web.identity import (
    Identity,
    LoginRequired,
    Person,
    check_csrf,
    identify,
    local_path,
    waiting_person,
)


@dataclass(frozen=True)
class Ctx:
    request: Request
    db: sqlite_utils.Database
    settings: Settings
    clock: Clock
    queue: TaskQueue
    #: The app's one client of the inference service (made at its first use).
    inference_client: Callable[[], InferenceClient]

    @property
    def inference(self) -> InferenceClient:
        return self.inference_client()

    def now(self) -> datetime:
        return self.clock()

    def redirect(self, url: str, message: str, level: str = "ok", **extra: Any) -> Redirect:
        """A 303 to ``url`` that shows ``message`` once on the page it lands on."""
        return flash.redirect(self.request, url, message, level, **extra)


def provide_identity(ctx: NamedDependency[Ctx]) -> Identity | None:
    return identify(ctx.request, ctx.db, ctx.settings, ctx.clock)


def provide_me(ctx: NamedDependency[Ctx], identity: NamedDependency[Identity | None]) -> Identity:
    request = ctx.request
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
        check_csrf(request, ctx.settings)
    return identity


def provide_person(ctx: NamedDependency[Ctx], identity: NamedDependency[Identity | None]) -> Person:
    request = ctx.request
    if identity is not None and identity.session is not None:
        person: Person | None = Person(identity.user, identity.session)
    else:  # an API key cannot answer invites: the person does, signed in
        person = waiting_person(request, ctx.db) if identity is None else None
    if person is None:
        if request.url.path.startswith("/api/"):
            raise NotAuthorizedException("Sign in first (invites are answered in a browser).")
        raise LoginRequired(headers={"Location": "/login?next=" + local_path(request.url.path)})
    check_csrf(request, ctx.settings)
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


Deps: TypeAlias = NamedDependency[Ctx]
#: The caller: ``me``, ``manager``, ``operator`` or ``api_key`` by the parameter's name.
Member: TypeAlias = NamedDependency[Identity]
#: ``person``: a signed-in browser session, in an account or not yet in any.
SignedIn: TypeAlias = NamedDependency[Person]
Form: TypeAlias = URLEncodedBody[dict[str, str]]
Json: TypeAlias = JSONBody[dict[str, Any]]
#: "Yes" in a JSON body or a form (a ticked box sends "on").
YES = (True, "true", "on", "yes")
