"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

import appliance
from appliance.clock import Clock
from appliance.config import Settings
from appliance.db import open_db
from appliance.errors import ApplianceError
from appliance.inference.client import InferenceClient

#: How long a probe's answer stands: ``/readyz`` asks the model for one token at most this
#: often, however often load balancers poll.
PROBE_SECONDS = 10
#: The probe's one-token request (any loaded chat model can answer it).
PROBE_REQUEST = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
#: A loaded CPU box may take seconds for the first token; longer than this is not ready.
PROBE_TIMEOUT_SECONDS = 30.0


class InferenceProbe:
    """The model answered a one-token request within the last ``PROBE_SECONDS`` and the
    service answers its ``/healthz`` now: "ok", else why not. A health endpoint answering is
    not enough: a service whose model is wedged or crashing still answers ``/healthz``."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._at: datetime | None = None
        self._result = ""

    async def check(self, inference: InferenceClient, now: datetime) -> str:
        async with self._lock:  # concurrent polls share one probe
            try:  # cheap, every poll: a cached "ok" must not outlive the process it came from
                await inference.ahealth()
            except ApplianceError as exc:
                self._at = None
                return str(exc)
            if self._at is None or not (
                self._at <= now < self._at + timedelta(seconds=PROBE_SECONDS)
            ):
                self._result = await self._probe(inference)
                self._at = now
            return self._result

    @staticmethod
    async def _probe(inference: InferenceClient) -> str:
        probe = InferenceClient(
            inference.base_url, inference.api_key, timeout=PROBE_TIMEOUT_SECONDS
        )
        try:
            answer = await probe.achat(PROBE_REQUEST)
        except ApplianceError as exc:
            return str(exc)
        if not answer.get("choices"):
            return "the model's answer had no choices"
        return "ok"


class HealthController(Controller):
    @get("/healthz", exclude_from_csrf=True, sync_to_thread=False)
    def healthz(self) -> dict[str, str]:
        """The web service is up. No dependency is checked."""
        return {"status": "ok", "version": appliance.__version__}

    @get("/readyz")
    async def readyz(
        self,
        request: Request,
        settings: NamedDependency[Settings],
        clock: NamedDependency[Clock],
    ) -> Response:
        """200 when the database opens and the model answered a one-token request in the
        last ``PROBE_SECONDS``, else 503. (Not through ``ctx``: a database that cannot open
        is a check that fails here, not an error.)"""
        checks: dict[str, str] = {}
        try:
            with open_db(settings) as db:
                db.execute("select 1").fetchone()
            checks["database"] = "ok"
        except ApplianceError as exc:
            checks["database"] = str(exc)
        inference = InferenceClient.from_settings(settings)
        checks["inference"] = await request.app.state.inference_probe.check(inference, clock())
        ready = all(value == "ok" for value in checks.values())
        return Response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": "5"},
        )
