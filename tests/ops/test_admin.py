"""The operator page and its API: operators only (404 for everyone else), suspension that
refuses the account's sessions and keys everywhere, deletion through the privacy
domain, and the same actions in the CLI."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.cli import main
from appliance.db import open_db
from appliance.privacy import erasure

CSRF = "test-csrf-token-value"


class As:
    """One test client (one app lifespan) acting as different signed-in users."""

    def __init__(self, client: TestClient, token: str | None) -> None:
        self.client, self.token = client, token
        self.headers = {"X-CSRFToken": CSRF}

    def _call(self, method: str, url: str, **kwargs):
        self.client.cookies.clear()
        if self.token:
            self.client.cookies.set("session", self.token)
            self.client.cookies.set("csrf", CSRF)
        return self.client.request(method, url, headers=self.headers, **kwargs)

    def get(self, url: str, **kwargs):
        return self._call("GET", url, **kwargs)

    def post(self, url: str, **kwargs):
        return self._call("POST", url, **kwargs)


@pytest.fixture
def world(client, db, settings, clock):
    operator, ops_account = accounts.create_user(
        db, "ops@example.com", clock(), account_name="Ops", operator=True
    )
    owner, team = accounts.create_user(db, "owner@example.com", clock(), account_name="Team")
    member, other = accounts.create_user(db, "member@example.com", clock(), account_name="Other")
    _, key = auth.create_key(
        db, user_id=owner.id, account_id=team.id, name="k", scope="manage", now=clock()
    )

    def signed_in(user, account) -> As:
        return As(client, auth.create_session(db, settings, user.id, account.id, clock()))

    clients = {
        "operator": signed_in(operator, ops_account),
        "owner": signed_in(owner, team),
        "other": signed_in(member, other),
        "anonymous": As(client, None),
    }
    return {"team": team, "key": key, "owner": owner, "clients": clients, "ops": ops_account}


ROUTES = [
    ("get", "/admin"),
    ("get", "/api/admin/overview"),
    ("get", "/api/admin/accounts"),
    ("post", "/api/admin/accounts/{team}/suspend"),
    ("post", "/api/admin/accounts/{team}/unsuspend"),
    ("post", "/api/admin/accounts/{team}/delete"),
    # (The page's form posts answer 403 to anyone without a CSRF token, on any path, before
    # routing; the browser test posts them with a real token.)
]


def test_everyone_but_operators_gets_404(world, client):
    team = world["team"].id
    callers = {
        "anonymous": world["clients"]["anonymous"],
        "owner": world["clients"]["owner"],
        "member of another account": world["clients"]["other"],
    }
    for who, caller in callers.items():
        for method, path in ROUTES:
            url = path.format(team=team)
            response = getattr(caller, method)(url, **({"json": {}} if method == "post" else {}))
            assert response.status_code == 404, (who, url, response.status_code)
    # An owner's manage key is no way in either.
    bearer = {"Authorization": f"Bearer {world['key']}"}
    client.cookies.clear()
    assert client.get("/api/admin/overview", headers=bearer).status_code == 404
    assert accounts.account(open_db(client.app.state.settings), team).status == "active"


def test_operator_overview(world):
    ops = world["clients"]["operator"]
    data = ops.get("/api/admin/overview").json()
    names = {row["name"] for row in data["accounts"]}
    assert {"Ops", "Team", "Other"} <= names
    team = next(row for row in data["accounts"] if row["name"] == "Team")
    assert team["owners"] == ["owner@example.com"]
    assert team["members"] == 1 and team["balance_usd"] == "0.00"
    assert data["worker"]["alive"] is False
    assert data["disk"]["free_bytes"] > 0
    assert data["recent_errors"] == []
    assert isinstance(data["purges"]["runs"], list)
    page = ops.get("/admin")
    assert page.status_code == 200
    shown = ("owner@example.com" in page.text, "Worker NOT running" in page.text)
    assert shown == (True, True)


def test_inference_state_comes_from_the_service(world, inference_service, settings):
    from conftest import make_settings

    from appliance.ops import overview

    linked = make_settings(settings.paths.data_dir, **{"inference.url": inference_service.url})
    state = overview.inference_state(linked)
    assert state["status"] == "ok"
    assert state["chat_model"] and state["model_layers"] > 0
    assert state["device"] in ("cpu", "gpu", "gpu (partial)")
    assert state["queue"] == 0
    assert state["tokens_per_second"] is not None
    down = overview.inference_state(
        make_settings(settings.paths.data_dir, **{"inference.url": "http://127.0.0.1:9"})
    )
    assert down["status"] == "unavailable"


def test_suspension_refuses_sessions_and_keys_until_lifted(world, client, db):
    ops = world["clients"]["operator"]
    owner = world["clients"]["owner"]
    team = world["team"].id
    bearer = {"Authorization": f"Bearer {world['key']}", "X-CSRFToken": CSRF}
    assert owner.get("/api/me").status_code == 200
    keyed = As(client, None)
    keyed.headers = bearer
    assert keyed.get("/api/instances/").status_code == 200

    response = ops.post(f"/api/admin/accounts/{team}/suspend")
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert owner.get("/api/me").status_code == 401
    assert keyed.get("/api/instances/").status_code == 401
    assert ops.post(f"/api/admin/accounts/{team}/suspend").status_code == 409

    assert ops.post(f"/api/admin/accounts/{team}/unsuspend").json()["status"] == "active"
    # The key works again; the sessions ended with the suspension.
    assert keyed.get("/api/instances/").status_code == 200
    assert owner.get("/api/me").status_code == 401


def test_operator_cannot_lock_themselves_out_or_act_without_csrf(world):
    ops = world["clients"]["operator"]
    own = world["ops"].id
    assert ops.post(f"/api/admin/accounts/{own}/suspend").status_code == 400
    ops.headers = {}
    assert ops.post(f"/api/admin/accounts/{world['team'].id}/suspend").status_code == 403
    assert ops.post("/api/admin/accounts/acc_nope/suspend").status_code == 403


def test_delete_goes_through_the_privacy_erasure(world, db):
    ops = world["clients"]["operator"]
    team = world["team"].id
    assert ops.post(f"/api/admin/accounts/{team}/delete", json={}).status_code == 400
    response = ops.post(f"/api/admin/accounts/{team}/delete", json={"confirm": True})
    assert response.status_code == 200
    assert erasure.deletion(db, team) is not None
    names = {row["name"] for row in ops.get("/api/admin/accounts").json()}
    assert "Team" not in names
    assert ops.post(f"/api/admin/accounts/{team}/delete", json={"confirm": True}).status_code == 404
    assert ops.post("/api/admin/accounts/acc_missing/unsuspend").status_code == 404


def test_cli_suspend_unsuspend_and_status(world, settings, capsys, db):
    team = world["team"].id
    args = ["--data-dir", str(settings.paths.data_dir)]
    assert main(["accounts", "suspend", team, *args]) == 0
    assert "is now suspended" in capsys.readouterr().out
    assert accounts.account(db, team).status == "suspended"
    assert main(["accounts", "suspend", team, *args]) == 2
    assert main(["accounts", "unsuspend", team, *args]) == 0
    assert accounts.account(db, team).status == "active"
    capsys.readouterr()
    assert main(["admin", "status", "--json", *args]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {row["id"] for row in data["accounts"]} >= {team}
    assert main(["admin", "status", *args]) == 0
    out = capsys.readouterr().out
    assert "worker: NOT running" in out and team in out


def test_service_restarts_on_the_page_the_api_and_the_cli(world, settings, capsys):
    """What ``appliance up`` recorded (tests/ops/test_supervisor.py writes it for real)."""
    import os

    from appliance.ops import services

    ops = world["clients"]["operator"]
    assert ops.get("/api/admin/overview").json()["services"] is None
    assert "No record: the services run neither" in ops.get("/admin").text
    services.write_state(
        services.state_path(settings),
        {
            "pid": os.getpid(),
            "updated_at": "2026-11-27T09:00:05+00:00",
            "services": {
                "inference": {
                    "state": "running",
                    "restarts": 2,
                    "last_exit": "signal SIGSEGV",
                    "last_exit_at": "2026-11-27T09:00:01+00:00",
                },
                "web": {"state": "running", "restarts": 0},
            },
        },
    )
    data = ops.get("/api/admin/overview").json()["services"]
    assert data["source"] == "up" and data["running"] is True
    inference = next(s for s in data["services"] if s["name"] == "inference")
    assert (inference["restarts"], inference["last_exit"]) == (2, "signal SIGSEGV")
    page = ops.get("/admin").text
    row = page[page.index('<tr data-service="inference">') :].split("</tr>")[0]
    assert "<td>2</td>" in row and "signal SIGSEGV" in row and "2026-11-27 09:00:01" in row
    assert main(["admin", "status", "--data-dir", str(settings.paths.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "services (appliance up):" in out
    assert (
        "  inference: running, 2 restarts (last died: signal SIGSEGV at 2026-11-27T09:00:01+00:00)"
        in out
    )
    assert "  web: running, 0 restarts" in out
