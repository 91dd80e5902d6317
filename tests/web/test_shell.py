"""The web shell: health, readiness, security headers, errors and the OpenAPI schema."""

import pytest
from conftest import make_settings

from appliance.web.security import CSP


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
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
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
