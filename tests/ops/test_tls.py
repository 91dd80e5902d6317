"""The web service over HTTPS (web.tls_cert/tls_key): HSTS on every response, secure
cookies, and a plain-HTTP listener that only redirects to the configured HTTPS URL."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import sys

import httpx
import pytest
from conftest import free_port, make_settings, service_env, wait_until

from appliance.errors import ConfigError
from appliance.web.serve import tls_files

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing")


def self_signed(directory) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_https_with_hsts_and_an_http_listener_that_only_redirects(settings, tmp_path):
    cert, key = self_signed(tmp_path)
    port, redirect = free_port(), free_port()
    public = f"https://127.0.0.1:{port}"
    (settings.paths.data_dir / "appliance.toml").write_text(
        f'[web]\nport = {port}\npublic_url = "{public}"\ntls_cert = "{cert}"\n'
        f'tls_key = "{key}"\nredirect_port = {redirect}\n'
    )
    trust = ssl.create_default_context(cafile=cert)
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "web"],
            env=service_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up():
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{public}/healthz", verify=trust, timeout=1)
            return None

        response = wait_until(up, timeout=60, what="the web service over HTTPS")
        assert response.status_code == 200
        assert response.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )
        login = httpx.get(f"{public}/login", verify=trust)
        assert "__Host-csrf" in login.headers.get("set-cookie", "")
        assert "secure" in login.headers["set-cookie"].lower()

        plain = httpx.get(f"http://127.0.0.1:{redirect}/login?next=/chat", timeout=5)
        assert plain.status_code == 308
        assert plain.headers["location"] == f"{public}/login?next=/chat"
        assert "csrf" not in plain.headers.get("set-cookie", "")
        # The Host header never chooses the target: no open redirect.
        evil = httpx.get(
            f"http://127.0.0.1:{redirect}/x", headers={"Host": "evil.example"}, timeout=5
        )
        assert evil.headers["location"] == f"{public}/x"
        # doctor finds the HTTPS service serving, and the certificate valid for 2 days.
        from appliance.doctor import run_checks

        checks = {c.name: c for c in run_checks(make_settings(settings.paths.data_dir))}
        assert checks["web"].status == "ok", checks["web"]
        assert checks["tls"].status == "warn" and "(in 1 days)" in checks["tls"].detail
        # Plain HTTP on the TLS port gets no page either.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
    finally:
        process.terminate()
        process.wait(15)


def test_doctor_fails_a_key_that_does_not_match_the_certificate(tmp_path):
    from appliance.doctor import _tls

    cert, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    wrong = make_settings(tmp_path, **{"web.tls_cert": cert, "web.tls_key": other_key})
    assert _tls(wrong)[0].status == "fail"
    assert _tls(make_settings(tmp_path))[0].status == "warn"  # plain HTTP


def test_tls_settings_are_checked(tmp_path):
    assert tls_files(make_settings(tmp_path)) is None
    with pytest.raises(ConfigError, match="set together"):
        tls_files(make_settings(tmp_path, **{"web.tls_cert": "/x.pem"}))
    with pytest.raises(ConfigError, match=r"cannot read /nonexistent/c\.pem"):
        tls_files(
            make_settings(tmp_path, **{"web.tls_cert": "/nonexistent/c.pem", "web.tls_key": "/x"})
        )
    settings = make_settings(tmp_path, **{"web.tls_cert": "/c.pem", "web.port": 8443})
    assert settings.public_url == "https://127.0.0.1:8443"
