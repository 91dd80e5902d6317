"""The home page and the first-run setup page."""

from __future__ import annotations

from typing import Annotated

import sqlite_utils
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Template

from appliance import firstrun
from appliance.config import Settings
from appliance.errors import InvalidInput


class PagesController(Controller):
    include_in_schema = False

    @get("/", sync_to_thread=True)
    def home(self, db: NamedDependency[sqlite_utils.Database]) -> Template:
        """The landing page: tells a new install how to finish setup."""
        return Template("home.html", context={"claimed": firstrun.is_claimed(db)})

    @get("/setup", sync_to_thread=True)
    def setup_form(
        self,
        settings: NamedDependency[Settings],
        db: NamedDependency[sqlite_utils.Database],
        token: FromQuery[str] = "",
    ) -> Template:
        """The one-time setup page; 404 unless the token is the current setup token."""
        firstrun.check_token(settings, db, token)
        return Template("setup.html", context={"token": token, "email": "", "flashes": []})

    @post("/setup", sync_to_thread=True, status_code=200)
    def setup_submit(
        self,
        settings: NamedDependency[Settings],
        db: NamedDependency[sqlite_utils.Database],
        data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Template:
        """Record the first operator's email."""
        token = data.get("token", "")
        email = data.get("email", "")
        try:
            claimed = firstrun.claim(settings, db, token, email)
        except InvalidInput as exc:
            flashes = [("error", str(exc))]
            return Template(
                "setup.html",
                context={"token": token, "email": email, "flashes": flashes},
                status_code=400,
            )
        return Template("setup_done.html", context={"email": claimed})
