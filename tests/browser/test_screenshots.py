"""scripts/screenshots.py works: it seeds a demo team, serves it and writes each page at
desktop and phone width as a small PNG."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from browser_support import CHROMIUM

pytestmark = pytest.mark.browser
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshots.py"


def test_the_script_writes_every_page_at_both_widths(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    out = tmp_path / "shots"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, timeout=300)
    names = sorted(path.name for path in out.iterdir())
    pages = ("chat", "dashboard", "knowledge", "settings")
    assert names == sorted(f"{p}-{w}.png" for p in pages for w in ("desktop", "phone"))
    for path in out.iterdir():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path.name
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == ((1280, 800) if "desktop" in path.name else (390, 844))
        assert len(data) < 250_000, f"{path.name} is {len(data)} bytes"
