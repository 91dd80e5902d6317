"""The account's OpenAI-compatible endpoint (``/v1``): bearer keys with scope ``inference``.

A session cookie alone never authorises these routes.
"""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from appliance.inference.client import InferenceClient
from appliance.web.identity import Identity


class V1Api(Controller):
    path = "/v1"
    tags = ["v1"]

    @get("/models")
    async def models(
        self, api_key: NamedDependency[Identity], inference: NamedDependency[InferenceClient]
    ) -> dict:
        """The chat and embedding models this appliance serves (OpenAI's list shape)."""
        return {"object": "list", "data": await inference.amodels()}
