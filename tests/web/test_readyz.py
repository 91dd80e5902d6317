"""``/readyz`` is ready only when the model answered a one-token request recently: a
service that answers ``/healthz`` while its model fails (wedged, crashing) is not ready.
The probe's answer stands for ``PROBE_SECONDS`` (the injected clock moves past it)."""

from __future__ import annotations

import json

import pytest
from conftest import JSONHandler, make_settings, serving
from litestar.testing import TestClient

from appliance.cli import initialise
from appliance.web import create_app
from appliance.web.health import PROBE_SECONDS


class Model(JSONHandler):
    """An inference service whose /healthz is fine when ``healthy``; chat works when
    ``answering``."""

    answering = False
    healthy = True
    chats: list[dict] = []

    def do_GET(self) -> None:
        if self.healthy:
            self.send_json({"status": "ok"})
        else:
            self.send_json({"error": {"message": "the model is loading"}}, 503)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).chats.append(body)
        if not self.answering:
            self.send_json({"error": {"message": "llama_decode failed"}}, 500)
            return
        message = {"role": "assistant", "content": "OK"}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        self.send_json({"choices": [choice], "usage": {"completion_tokens": 1}})


@pytest.fixture
def model():
    Model.answering, Model.healthy, Model.chats = False, True, []
    with serving(Model) as url:
        yield url


def test_ready_only_after_the_model_answers_one_token(tmp_path, model, clock):
    settings = make_settings(tmp_path / "data", **{"inference.url": model})
    initialise(settings)
    with TestClient(create_app(settings, clock=clock)) as client:
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"] == {"database": "ok", "inference": "llama_decode failed"}
        assert Model.chats == [
            {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1, "stream": False}
        ]
        Model.answering = True
        # Within the window the last probe stands: no new request to the model.
        clock.advance(seconds=PROBE_SECONDS - 1)
        assert client.get("/readyz").status_code == 503
        assert len(Model.chats) == 1
        clock.advance(seconds=2)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["inference"] == "ok"
        assert client.get("/readyz").status_code == 200
        assert len(Model.chats) == 2

        # A cached "ok" does not outlive the service it came from: /healthz is asked on
        # every poll (a restarted service that is still loading is not ready).
        Model.healthy = False
        gone = client.get("/readyz")
        assert gone.status_code == 503 and "loading" in gone.json()["checks"]["inference"]
        Model.healthy = True
        assert client.get("/readyz").status_code == 200
        assert len(Model.chats) == 3  # probed afresh, not the old answer
