"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency

import appliance
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError
from appliance.inference.client import InferenceClient


class HealthController(Controller):
    @get("/healthz", exclude_from_csrf=True, sync_to_thread=False)
    def healthz(self) -> dict[str, str]:
        """The web service is up. No dependency is checked."""
        return {"status": "ok", "version": appliance.__version__}

    @get("/readyz")
    async def readyz(
        self, settings: NamedDependency[Settings], inference: NamedDependency[InferenceClient]
    ) -> Response:
        """200 when the database opens and the inference service answers, else 503."""
        checks: dict[str, str] = {}
        try:
            db = open_db(settings)
            try:
                db.execute("select 1").fetchone()
            finally:
                db.close()
            checks["database"] = "ok"
        except ApplianceError as exc:
            checks["database"] = str(exc)
        try:
            await inference.ahealth()
            checks["inference"] = "ok"
        except ApplianceError as exc:
            checks["inference"] = str(exc)
        ready = all(value == "ok" for value in checks.values())
        return Response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": "5"},
        )
