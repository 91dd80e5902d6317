"""The web service: the only package that imports Litestar (besides the inference server)."""

from appliance.web.app import create_app

__all__ = ["create_app"]
