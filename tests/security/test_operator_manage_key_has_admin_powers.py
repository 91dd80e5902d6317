"""Audit 2026-12, finding 6: an operator's ordinary ``manage`` API key carried every
operator power (list, suspend and delete accounts). Operator actions now need a signed-in
operator session (with CSRF on unsafe calls) or a key of the separate ``admin`` scope,
which only the CLI creates, for operators only; any other key gets 404."""

from __future__ import annotations

import json

import pytest

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.cli import main
from appliance.errors import InvalidInput

CSRF = "test-csrf-token-value"


@pytest.fixture
def world(db, clock):
    operator, ops = accounts.create_user(
        db, "ops@example.com", clock(), account_name="Ops", operator=True
    )
    owner, team = accounts.create_user(db, "owner@example.com", clock(), account_name="Team")
    _, manage = auth.create_key(
        db, user_id=operator.id, account_id=ops.id, name="ci", scope="manage", now=clock()
    )
    return {"operator": operator, "ops": ops, "owner": owner, "team": team, "manage": manage}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cli_key(settings, capsys, email: str, account_id: str) -> tuple[int, str]:
    code = main(
        [
            "keys", "create", "--data-dir", str(settings.paths.data_dir),
            "--email", email, "--account", account_id, "--scope", "admin",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    return code, json.loads(out)["key"] if code == 0 else ""


def test_an_operators_manage_key_gets_404_on_every_operator_action(client, world, db):
    headers = bearer(world["manage"])
    assert client.get("/api/members", headers=headers).status_code == 200  # a working key
    assert client.get("/api/admin/overview", headers=headers).status_code == 404
    assert client.get("/api/admin/accounts", headers=headers).status_code == 404
    team = world["team"].id
    suspend = client.post(f"/api/admin/accounts/{team}/suspend", headers=headers)
    assert suspend.status_code == 404
    delete = client.post(
        f"/api/admin/accounts/{team}/delete", json={"confirm": True}, headers=headers
    )
    assert delete.status_code == 404
    assert accounts.account(db, team).status == "active"
    assert client.get("/admin", headers=headers).status_code == 404


def test_only_the_cli_creates_admin_keys_and_only_for_operators(
    client, world, settings, capsys, db, clock
):
    # Not through the API, not even by the operator's own session or manage key ...
    refused = client.post(
        "/api/keys", json={"name": "x", "scope": "admin"}, headers=bearer(world["manage"])
    )
    assert refused.status_code == 400
    with pytest.raises(InvalidInput):
        auth.create_key(
            db,
            user_id=world["operator"].id,
            account_id=world["ops"].id,
            name="x",
            scope="admin",
            now=clock(),
        )
    # ... nor by the CLI for someone who is not an operator.
    code, _ = cli_key(settings, capsys, "owner@example.com", world["team"].id)
    assert code == 2

    code, key = cli_key(settings, capsys, "ops@example.com", world["ops"].id)
    assert code == 0
    listed = client.get("/api/admin/accounts", headers=bearer(key))
    assert listed.status_code == 200
    assert world["team"].id in {row["id"] for row in listed.json()}
    team = world["team"].id
    assert (
        client.post(f"/api/admin/accounts/{team}/suspend", headers=bearer(key)).status_code == 200
    )
    assert accounts.account(db, team).status == "suspended"
    # An admin key is good for nothing else.
    assert client.get("/api/members", headers=bearer(key)).status_code == 401
    assert client.get("/v1/models", headers=bearer(key)).status_code == 401


def test_an_operator_session_still_works_with_csrf(client, world, settings, db, clock):
    token = auth.create_session(db, settings, world["operator"].id, world["ops"].id, clock())
    client.cookies.set("session", token)
    client.cookies.set("csrf", CSRF)
    assert client.get("/api/admin/accounts").status_code == 200
    team = world["team"].id
    assert client.post(f"/api/admin/accounts/{team}/suspend").status_code == 403
    suspended = client.post(f"/api/admin/accounts/{team}/suspend", headers={"X-CSRFToken": CSRF})
    assert suspended.status_code == 200


def test_keys_made_before_the_upgrade_keep_working(tmp_path, clock):
    from conftest import make_settings

    from appliance.db import MIGRATION_MODULES, migration_set, open_db

    settings = make_settings(tmp_path / "old")
    settings.paths.data_dir.mkdir()
    db = open_db(settings, migrate=False)
    for name in MIGRATION_MODULES:
        stop = "m002_admin_key_scope" if name == "auth" else None
        migration_set(name).apply(db, stop_before=stop)
    user, account = accounts.create_user(db, "old@example.com", clock(), account_name="Old")
    _, secret = auth.create_key(
        db, user_id=user.id, account_id=account.id, name="old", scope="inference", now=clock()
    )
    migration_set("auth").apply(db)
    assert auth.authenticate_key(db, secret, clock()).scope == "inference"
    admin, _ = auth.create_admin_key(
        db, user_id=user.id, account_id=account.id, name="ops", now=clock()
    )
    assert admin.scope == "admin"
    db.close()
