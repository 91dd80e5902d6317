"""CORS on /v1: off by default; the listed origins get a correct preflight and headers."""

from conftest import make_settings
from litestar.testing import TestClient

from appliance.cli import initialise
from appliance.web import create_app

ALLOWED = "https://app.example.lan"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}


def client(tmp_path, **overrides) -> TestClient:
    settings = make_settings(tmp_path / "data", **overrides)
    initialise(settings)
    return TestClient(create_app(settings))


def test_cors_is_off_by_default(tmp_path):
    with client(tmp_path) as http:
        answer = http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert "access-control-allow-origin" not in answer.headers
        models = http.get("/v1/models", headers={"Origin": ALLOWED})
        assert models.status_code == 401 and "access-control-allow-origin" not in models.headers


def test_listed_origins_get_a_preflight_and_cors_headers(tmp_path):
    with client(tmp_path, **{"web.cors_origins": [ALLOWED]}) as http:
        answer = http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in answer.headers["access-control-allow-methods"]
        assert "x-stainless-os" in answer.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in answer.headers
        # Errors carry the header too, so the page can read them.
        models = http.get("/v1/models", headers={"Origin": ALLOWED})
        assert models.status_code == 401
        assert models.headers["access-control-allow-origin"] == ALLOWED
        other = http.options(
            "/v1/chat/completions", headers={"Origin": "https://evil.example", **PREFLIGHT}
        )
        assert "access-control-allow-origin" not in other.headers
        page = http.get("/login", headers={"Origin": ALLOWED})
        assert "access-control-allow-origin" not in page.headers  # /v1 only
