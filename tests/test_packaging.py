"""A built wheel carries the templates and static files: installed outside the checkout it
serves the sign-in page and the stylesheet."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

RENDER = """
import sys
from pathlib import Path

import appliance
from litestar.testing import TestClient

from appliance.cli import initialise
from appliance.config import Settings
from appliance.web import create_app

assert Path(appliance.__file__).is_relative_to(sys.argv[1]), appliance.__file__
settings = Settings.load(data_dir=Path(sys.argv[2]), environ={}, overrides={})
initialise(settings)
with TestClient(create_app(settings)) as client:
    page = client.get("/login")
    css = client.get("/static/app.css")
print(page.status_code, css.status_code, "Sign in" in page.text)
"""


@pytest.mark.timeout(600)
def test_wheel_renders_login_outside_the_checkout(tmp_path):
    root = Path(__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, root],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("appliance-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "appliance/webui/templates/login.html" in names
    assert "appliance/webui/static/app.css" in names
    assert "appliance/webui/templates/policy/privacy.md" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The dependencies come from this venv; the package itself only from the wheel (first on the
    # path, ahead of the editable install), run from a directory outside the checkout.
    run = subprocess.run(
        [sys.executable, "-c", RENDER, str(site), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["200", "200", "True"]
