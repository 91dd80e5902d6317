"""`appliance billing` (operator adjustments) and doctor's billing checks."""

from __future__ import annotations

import pytest

from appliance.accounts import service as accounts
from appliance.billing import ledger
from appliance.cli import main
from appliance.config import Settings


@pytest.fixture
def data_env(settings, monkeypatch):
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(settings.paths.data_dir))
    return settings


def test_adjust_and_show(data_env, db, clock, capsys):
    _, account = accounts.create_user(db, "o@example.com", clock(), account_name="T")
    assert (
        main(
            ["billing", "adjust", "--account", account.id, "--amount", "10", "--reason", "welcome"]
        )
        == 0
    )
    assert (
        main(["billing", "adjust", "--account", account.id, "--amount", "-2.5", "--reason", "fix"])
        == 0
    )
    assert (
        main(["billing", "adjust", "--account", account.id, "--amount", "-20", "--reason", "x"])
        != 0
    )
    assert (
        main(["billing", "adjust", "--account", account.id, "--amount", "1", "--reason", " "]) != 0
    )
    assert ledger.balance(db, account.id) == 7_500_000
    (entry, _) = ledger.entries(db, account.id)
    assert (entry.kind, entry.reason, entry.actor_ref) == ("adjustment", "fix", "cli")
    capsys.readouterr()
    assert main(["billing", "show", "--account", account.id]) == 0
    out = capsys.readouterr().out
    assert "balance 7.50 USD" in out and "welcome" in out
    assert main(["billing", "show", "--account", "acc_nope"]) != 0


def test_doctor_reports_billing_without_showing_the_keys(data_env, monkeypatch, capsys):
    from appliance import doctor

    monkeypatch.setenv("APPLIANCE_BILLING__ENABLED", "true")
    monkeypatch.setenv("APPLIANCE_STRIPE__SECRET_KEY", "sk_test_DO_NOT_PRINT")
    monkeypatch.setenv("APPLIANCE_STRIPE__WEBHOOK_SECRET", "whsec_DO_NOT_PRINT")
    checks = {c.name: c for c in doctor.run_checks(Settings.load())}
    assert checks["billing"].status == "ok" and "Stripe configured" in checks["billing"].detail
    assert checks["ledger"].status == "ok"
    main(["doctor"])
    assert "DO_NOT_PRINT" not in capsys.readouterr().out
    monkeypatch.delenv("APPLIANCE_STRIPE__WEBHOOK_SECRET")
    checks = {c.name: c for c in doctor.run_checks(Settings.load())}
    assert (
        checks["billing"].status == "warn" and "stripe.webhook_secret" in checks["billing"].detail
    )
