"""The web shell: health, readiness, security headers, errors and the OpenAPI schema."""

import pytest
from conftest import make_settings
from litestar import Request, get
from litestar.testing import create_test_client

from appliance.web.security import CSP, strip_internal_headers_middleware


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_reports_inference_down(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert "not answering" in body["checks"]["inference"]
    assert response.headers["retry-after"]


def test_readyz_ready_when_inference_answers(tmp_path, inference_service):
    from litestar.testing import TestClient

    from appliance.cli import initialise
    from appliance.web import create_app

    settings = make_settings(tmp_path / "data", **{"inference.url": inference_service.url})
    initialise(settings)
    # The probe asks the model for a token, which takes the shared service's key.
    (settings.paths.secrets / "inference_key").write_text(
        (inference_service.settings.paths.secrets / "inference_key").read_text()
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "inference": "ok"}}


@pytest.mark.parametrize("path", ["/", "/healthz", "/setup?token=x", "/does-not-exist"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    assert response.headers["content-security-policy"] == CSP
    for directive in ("default-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
        assert directive in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in response.headers  # plain HTTP here


def test_hsts_over_https(app):
    from litestar.testing import TestClient

    with TestClient(app, base_url="https://appliance.test") as client:
        response = client.get("/healthz")
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


def test_not_found_is_a_page_for_browsers_and_json_for_the_api(client):
    page = client.get("/nowhere")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text
    api = client.get("/api/nowhere")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == 404


def test_openapi_schema(client):
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert "/healthz" in response.json()["paths"]


def test_static_assets_are_local(client):
    css = client.get("/static/app.css")
    assert css.status_code == 200
    home = client.get("/").text
    assert "http://" not in home.replace("http://127.0.0.1", "")
    assert "https://" not in home


@get("/echo", sync_to_thread=False)
def echo_headers(request: Request) -> dict:
    return dict(request.headers)


def test_internal_inference_headers_are_stripped_from_requests():
    """A user cannot pose as another account towards the inference service."""
    with create_test_client([echo_headers], middleware=[strip_internal_headers_middleware]) as c:
        headers = c.get(
            "/echo",
            headers={"X-Appliance-Account": "victim", "X-Appliance-Priority": "interactive"},
        ).json()
    assert "x-appliance-account" not in headers
    assert "x-appliance-priority" not in headers
