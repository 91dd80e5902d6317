"""Retention purges with an injected clock: limits to the second, idempotence, catch-up
and resumption after an interrupted run."""

from datetime import UTC, datetime, timedelta

from conftest import make_settings
from privacy_support import request_erasure

from appliance.clock import iso, years_before
from appliance.db import open_db
from appliance.privacy import receipts, retention
from appliance.privacy.requestlog import RequestEntry, record

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def log_row(db, at):
    record(db, RequestEntry(iso(at), "GET", "/api/me", 200, 1.0, None, None))


def count(db, table):
    return db.execute(f"select count(*) from {table}").fetchone()[0]  # noqa: S608


def test_request_log_kept_to_the_second(settings, db):
    days = settings.privacy.log_retention_days
    log_row(db, NOW - timedelta(days=days, seconds=1))  # 30 days + 1 s: gone
    log_row(db, NOW - timedelta(days=days) + timedelta(seconds=1))  # 30 days - 1 s: kept
    result = retention.run_job(db, settings, "request_log", NOW)
    assert result.deleted == 1 and result.complete
    (kept,) = db.execute("select at from request_log").fetchone()
    assert kept == iso(NOW - timedelta(days=days) + timedelta(seconds=1))


def test_purge_twice_deletes_nothing_the_second_time(settings, db):
    for days in (40, 50, 60):
        log_row(db, NOW - timedelta(days=days))
    db.execute(
        "insert into auth_events (kind, subject, at) values ('code_sent', 'x', ?)",
        [iso(NOW - timedelta(days=31))],
    )
    first = {r.job: r.deleted for r in retention.run_all(db, settings, NOW)}
    assert first["request_log"] == 3 and first["auth_events"] == 1
    second = retention.run_all(db, settings, NOW)
    assert all(r.deleted == 0 and r.complete for r in second), second


def test_interrupted_purge_completes_on_the_next_run(tmp_path):
    settings = make_settings(tmp_path / "data", **{"privacy.purge_batch_size": 10})
    db = open_db(settings)
    for minute in range(35):
        log_row(db, NOW - timedelta(days=90, minutes=minute))
    # A run that stops after two batches (its budget) leaves the rest...
    partial = retention.run_all(db, settings, NOW, max_batches=2)
    by_job = {r.job: r for r in partial}
    assert by_job["request_log"].deleted == 20 and not by_job["request_log"].complete
    assert count(db, "request_log") == 15
    # ...and doctor sees the unfinished run.
    assert "request_log" in retention.overdue(db, NOW)
    # The next run finishes it: catching up after downtime is the same thing.
    later = {r.job: r for r in retention.run_all(db, settings, NOW + timedelta(hours=1))}
    assert later["request_log"].deleted == 15 and later["request_log"].complete
    assert count(db, "request_log") == 0
    assert retention.overdue(db, NOW + timedelta(hours=1)) == []
    db.close()


def test_expired_codes_sessions_invites_are_purged(settings, db, clock):
    from appliance.accounts import service as accounts
    from appliance.auth import service as auth

    user, account = accounts.create_user(db, "a@example.com", clock())
    auth.request_code(db, settings, "a@example.com", "127.0.0.1", clock())
    auth.create_session(db, settings, user.id, account.id, clock())
    accounts.invite(db, account.id, "owner", user.id, "b@example.com", "member", clock())
    later = clock() + timedelta(days=15)
    results = {r.job: r.deleted for r in retention.run_all(db, settings, later)}
    assert results["signin_codes"] == 1
    assert results["sessions"] == 1
    assert results["invites"] == 1
    assert count(db, "otp_codes") == count(db, "sessions") == count(db, "invites") == 0


def test_outbox_purged_after_log_retention(settings, db):
    outbox = settings.paths.outbox
    outbox.mkdir(exist_ok=True)
    old = outbox / "20261001T080000000000Z-aaaaaa.eml"
    new = outbox / "20261120T080000000000Z-bbbbbb.eml"
    old.write_text("To: a@example.com\n\nold")
    new.write_text("To: a@example.com\n\nnew")
    result = retention.run_job(db, settings, "outbox", NOW)
    assert result.deleted == 1
    assert not old.exists() and new.exists()


def test_doctor_reports_last_runs_and_overdue(settings, db):
    assert set(retention.overdue(db, NOW)) >= set(retention.JOBS)
    retention.run_all(db, settings, NOW)
    assert retention.overdue(db, NOW + timedelta(hours=1)) == []
    assert set(retention.overdue(db, NOW + timedelta(hours=26))) == set(retention.JOBS)
    from appliance.doctor import _purges

    checks = {c.name: c for c in _purges(db)}
    assert checks["purge request_log"].status in ("ok", "warn")
    assert "last ran" in checks["purge request_log"].detail


def test_billing_kept_pseudonymized_for_the_tax_period(settings, db):
    from appliance.accounts import service as accounts
    from appliance.billing import ledger

    years = settings.privacy.tax_retention_years
    cutoff = years_before(NOW, years)
    _owner, account = accounts.create_user(db, "payer@example.com", NOW - timedelta(days=4000))
    _other, kept_account = accounts.create_user(db, "stays@example.com", NOW)
    with db.atomic():
        ledger.post(db, account.id, "topup", 5_000_000, cutoff - timedelta(days=1))  # 7 y + 1 d
        ledger.post(db, account.id, "topup", 7_000_000, cutoff + timedelta(days=1))  # 7 y - 1 d
        ledger.post(db, kept_account.id, "topup", 1_000_000, cutoff - timedelta(days=400))
    request_erasure(db, settings, account.id, NOW)
    rows = db.execute("select account_ref, amount_microusd from ledger_entries").fetchall()
    assert account.id not in {r[0] for r in rows}  # pseudonymized at once
    retention.run_all(db, settings, NOW)
    left = db.execute(
        "select account_ref, amount_microusd from ledger_entries order by amount_microusd"
    ).fetchall()
    # The live account's old record stays; of the erased one, 7 years - 1 day is kept
    # under its pseudonym and 7 years + 1 day is gone.
    assert [a for _, a in left] == [1_000_000, 7_000_000]
    assert left[0][0] == kept_account.id
    assert left[1][0].startswith("erased_")
    (receipt,) = receipts.receipts(db)
    assert receipt.body["billing_reference"] == left[1][0]
    assert retention.run_job(db, settings, "billing", NOW).deleted == 0


def test_a_failing_job_does_not_stop_the_others(settings, db):
    log_row(db, NOW - timedelta(days=90))
    stuck = settings.paths.outbox / "20261001T080000000000Z-aaaaaa.eml"
    stuck.mkdir(parents=True)  # not a file: removing it fails
    results = {r.job: r for r in retention.run_all(db, settings, NOW)}
    assert results["outbox"].error == "IsADirectoryError" and not results["outbox"].complete
    assert results["request_log"].deleted == 1 and results["billing"].complete
    assert "outbox" in retention.overdue(db, NOW)
    stuck.rmdir()
    assert {r.job: r for r in retention.run_all(db, settings, NOW)}["outbox"].complete
    assert "outbox" not in retention.overdue(db, NOW)


def test_the_worker_runs_every_purge_hourly(settings, db):
    from appliance.tasks import create_queue

    queue = create_queue(settings, immediate=True)
    task = queue.purge.task_class()
    assert task.validate_datetime(datetime(2026, 11, 27, 3, 17))
    assert not task.validate_datetime(datetime(2026, 11, 27, 3, 18))
    log_row(db, datetime.now(UTC) - timedelta(days=60))
    queue.purge()  # immediate mode: runs here, as the worker would
    assert count(db, "request_log") == 0
    jobs = {row[0] for row in db.execute("select job from purge_runs where complete = 1")}
    assert jobs == set(retention.JOBS)
