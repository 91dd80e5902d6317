"""What nearly every handler takes besides who is asking, as one request-scoped dependency.

A handler declares ``ctx: Deps`` (the database, settings, clock, task queue and, when it
asks for it, the inference client) next to its caller (``me: Member``, ``manager: Member``;
see web/identity.py), and reads as: parse, call one service, render.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, TypeAlias

import sqlite_utils
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import JSONBody, URLEncodedBody
from litestar.response import Redirect

from appliance.clock import Clock
from appliance.config import Settings
from appliance.inference.client import InferenceClient
from appliance.tasks import TaskQueue
from appliance.web import flash
from appliance.web.identity import Identity, Person


@dataclass(frozen=True)
class Ctx:
    request: Request
    db: sqlite_utils.Database
    settings: Settings
    clock: Clock
    queue: TaskQueue

    @cached_property
    def inference(self) -> InferenceClient:
        """Made on first use: it reads the service's key from the vault."""
        return InferenceClient.from_settings(self.settings)

    def now(self) -> datetime:
        return self.clock()

    def redirect(self, url: str, message: str, level: str = "ok", **extra: Any) -> Redirect:
        """A 303 to ``url`` that shows ``message`` once on the page it lands on."""
        return flash.redirect(self.request, url, message, level, **extra)


def provide_ctx(
    request: Request,
    db: NamedDependency[sqlite_utils.Database],
    settings: NamedDependency[Settings],
    clock: NamedDependency[Clock],
    queue: NamedDependency[TaskQueue],
) -> Ctx:
    return Ctx(request, db, settings, clock, queue)


Deps: TypeAlias = NamedDependency[Ctx]
#: The caller: ``me``, ``manager``, ``operator`` or ``api_key`` by the parameter's name.
Member: TypeAlias = NamedDependency[Identity]
#: ``person``: a signed-in browser session, in an account or not yet in any.
SignedIn: TypeAlias = NamedDependency[Person]
Form: TypeAlias = URLEncodedBody[dict[str, str]]
Json: TypeAlias = JSONBody[dict[str, Any]]
#: "Yes" in a JSON body or a form (a ticked box sends "on").
YES = (True, "true", "on", "yes")
