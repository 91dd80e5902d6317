"""Audit 2026-12, finding 8: the paths Litestar's CSRF middleware skips were unanchored
regexes (``/api/``, ``/v1/``, ``/stripe/webhook``), matched anywhere in the path, so a page
at, say, ``/settings/api/...`` would have taken form posts without a token. They are
anchored now and listed in one place (``web/security.py``)."""

from __future__ import annotations

import re

import pytest
from litestar import post
from litestar.testing import TestClient

from appliance.web import create_app
from appliance.web.security import CSRF_EXEMPT

#: Pages that a later change might add: each contains an exempt prefix, but not at the start.
PROBES = ("/settings/api/probe", "/chat/v1/probe", "/billing/stripe/webhook/probe")


def probe_handlers():
    def make(path: str):
        @post(path, status_code=200, sync_to_thread=False, include_in_schema=False)
        def probe() -> str:
            return "changed"

        return probe

    return [make(path) for path in PROBES]


@pytest.fixture
def probed(settings, clock, queue):
    app = create_app(settings, clock=clock, queue=queue)
    for handler in probe_handlers():
        app.register(handler)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


@pytest.mark.parametrize("path", PROBES)
def test_a_page_whose_path_contains_an_exempt_prefix_still_needs_the_token(probed, path):
    response = probed.post(path, data={"x": "1"})
    assert response.status_code == 403
    assert "changed" not in response.text


def test_every_form_route_outside_the_exempt_prefixes_needs_the_token(client, app):
    exempt = re.compile("|".join(CSRF_EXEMPT))
    checked = []
    for route in app.routes:
        if "POST" not in getattr(route, "methods", ()) or exempt.search(route.path):
            continue
        path = re.sub(r"\{[^}]+:int\}", "1", re.sub(r"\{[^}:]+:str\}", "x", route.path))
        response = client.post(path, data={"x": "1"})
        assert response.status_code == 403, path
        checked.append(path)
    assert "/logout" in checked and "/settings/persona/samples" in checked
    assert all(pattern.startswith("^") for pattern in CSRF_EXEMPT)
