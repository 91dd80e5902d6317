"""/privacy in the browser under each main configuration (TLS, Claude, billing on or
off): every statement the page shows, as a reader sees it, matches the setting behind it.

One browser; each configuration is its own app, served to the page through Playwright's
request routing so that no certificate or port is needed per configuration."""

from __future__ import annotations

import itertools
import re

import pytest
from conftest import make_settings
from litestar.testing import TestClient
from policy_support import SAAS_ONLY, configuration, statements

from appliance.cli import initialise
from appliance.tasks import create_queue
from appliance.web import create_app

pytestmark = pytest.mark.browser

ORIGIN = "http://appliance.test"


def serve(page, client: TestClient) -> None:
    """Answer every request the page makes from ``client`` (the app in this process)."""

    def handle(route, request) -> None:
        path = request.url.removeprefix(ORIGIN) or "/"
        answer = client.request(request.method, path, follow_redirects=False)
        route.fulfill(status=answer.status_code, headers=dict(answer.headers), body=answer.content)

    page.route(f"{ORIGIN}/**", handle)


def test_the_policy_a_reader_sees_matches_each_configuration(tmp_path, clock, page):
    for tls, claude, billing in itertools.product((False, True), repeat=3):
        switches = {"tls": tls, "claude": claude, "billing": billing}
        home = tmp_path / "-".join(f"{k}{int(v)}" for k, v in switches.items())
        home.mkdir()
        settings = make_settings(home / "data", **configuration(home, **switches))
        initialise(settings)
        app = create_app(settings, clock=clock, queue=create_queue(settings, immediate=True))
        with TestClient(app) as client:
            page.unroute(f"{ORIGIN}/**")
            serve(page, client)
            response = page.goto(f"{ORIGIN}/privacy")
            assert response.status == 200
            assert page.get_by_role("heading", level=1).first.is_visible()
            # innerText is what is rendered: hidden or collapsed text does not count.
            seen = re.sub(r"\s+", " ", page.inner_text("main"))
        for statement, shown in statements(**switches).items():
            assert (statement in seen) is shown, (switches, statement)
        for seed in SAAS_ONLY:
            assert seed not in seen, (switches, seed)
