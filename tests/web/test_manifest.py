"""Installable as a web app: the layout links a manifest whose icons all exist."""

import struct


def test_manifest_and_icons(client):
    page = client.get("/login").text
    assert '<link rel="manifest" href="/static/manifest.webmanifest">' in page
    manifest = client.get("/static/manifest.webmanifest")
    assert manifest.status_code == 200
    data = manifest.json()
    assert data["start_url"] == "/" and data["display"] == "standalone"
    sizes = set()
    for icon in data["icons"]:
        response = client.get(icon["src"])
        assert response.status_code == 200, icon["src"]
        if icon["type"] == "image/png":
            width, height = struct.unpack(">II", response.content[16:24])
            assert icon["sizes"] == f"{width}x{height}"
            sizes.add(width)
    assert {192, 512} <= sizes
