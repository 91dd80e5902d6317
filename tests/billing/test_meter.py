"""The ledger and metering rules, on a real database: holds, settle, caps, instance time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from conftest import in_threads, make_settings

from appliance.accounts import service as accounts
from appliance.billing import ledger, meter, service
from appliance.billing.personal import KEPT
from appliance.billing.service import pseudonymize_account
from appliance.db import open_db
from appliance.errors import InvalidInput, PaymentRequired
from appliance.instances import service as instances

# 1 µ$ per prompt token, 2 µ$ per completion token: easy to count.
PRICES = {
    "billing.enabled": True,
    "billing.price_prompt_per_1k": 0.001,
    "billing.price_completion_per_1k": 0.002,
}


@pytest.fixture
def on(settings):
    return make_settings(settings.paths.data_dir, **PRICES)


def fund(db, account_id: str, microusd: int, now) -> None:
    service.adjust(db, account_id, ledger.usd_precise(microusd), "test credit", now)


def reserve(db, settings, now, *, prompt=10, completion=10, instance="ins_a", key="key_a"):
    return meter.reserve(
        db,
        settings,
        account_id="acc_1",
        instance_id=instance,
        key_id=key,
        model="tiny",
        prompt_tokens=prompt,
        max_completion_tokens=completion,
        now=now,
    )


def invariant(db, account_id: str = "acc_1") -> None:
    assert ledger.balance(db, account_id) == ledger.ledger_sum(db, account_id)
    assert ledger.balance(db, account_id) >= 0


def test_money_conversions():
    assert ledger.micro("12.34") == 12_340_000
    assert ledger.micro(0.0005) == 500
    assert ledger.usd(12_345_678) == "12.35"
    assert ledger.usd(-4_000) == "0.00"
    assert ledger.usd_precise(-65) == "-0.000065"
    assert meter.Prices(1000, 2000).cost(10, 10) == 30
    assert meter.Prices(500, 0).cost(1, 0) == 1  # rounded up to the next micro-dollar


def test_reserve_settle_release(db, on, clock):
    fund(db, "acc_1", 100, clock())
    hold = reserve(db, on, clock())  # 10 + 20 = 30
    assert hold.amount_microusd == 30
    assert ledger.held(db, "acc_1") == 30
    assert meter.settle(db, on, hold, prompt_tokens=10, completion_tokens=4, now=clock()) == 18
    assert ledger.balance(db, "acc_1") == 82 and ledger.held(db, "acc_1") == 0
    # Settling twice charges once.
    assert meter.settle(db, on, hold, prompt_tokens=10, completion_tokens=4, now=clock()) == 0
    released = reserve(db, on, clock())
    meter.release(db, released, now=clock())
    assert ledger.balance(db, "acc_1") == 82 and ledger.held(db, "acc_1") == 0
    usage = ledger.entries(db, "acc_1", kinds=("usage",))
    assert [(e.prompt_tokens, e.completion_tokens, e.key_id, e.instance_id) for e in usage] == [
        (10, 4, "key_a", "ins_a")
    ]
    invariant(db)


def test_holds_count_against_the_balance(db, on, clock):
    fund(db, "acc_1", 90, clock())
    holds = [reserve(db, on, clock()) for _ in range(3)]
    with pytest.raises(PaymentRequired):
        reserve(db, on, clock())
    meter.release(db, holds[0])
    reserve(db, on, clock())
    invariant(db)


def test_parallel_reservations_pass_exactly_as_many_as_covered(settings, on, clock):
    db = open_db(on)
    fund(db, "acc_1", 5 * 30, clock())
    db.close()
    results: list[str] = []
    barrier = threading.Barrier(20)

    def one() -> None:
        conn = open_db(on)
        try:
            barrier.wait()
            reserve(conn, on, clock())
            results.append("ok")
        except PaymentRequired:
            results.append("402")
        finally:
            conn.close()

    in_threads([one] * 20)
    assert results.count("ok") == 5 and results.count("402") == 15


def test_settle_beyond_the_hold_never_goes_negative(db, on, clock):
    fund(db, "acc_1", 40, clock())
    hold = reserve(db, on, clock())  # 30
    charged = meter.settle(db, on, hold, prompt_tokens=100, completion_tokens=0, now=clock())
    assert charged == 40
    entry = ledger.entries(db, "acc_1", kinds=("usage",))[0]
    assert entry.shortfall_microusd == 60 and entry.balance_microusd == 0
    invariant(db)


def test_an_expired_hold_is_released_and_a_late_settle_charges_once(db, on, clock):
    fund(db, "acc_1", 100, clock())
    hold = reserve(db, on, clock())
    assert meter.expire_holds(db, clock()) == 0
    clock.advance(seconds=on.billing.hold_timeout_seconds)
    assert meter.expire_holds(db, clock()) == 1
    assert ledger.held(db, "acc_1") == 0
    assert meter.settle(db, on, hold, prompt_tokens=10, completion_tokens=10, now=clock()) == 30
    assert meter.settle(db, on, hold, prompt_tokens=10, completion_tokens=10, now=clock()) == 0
    assert ledger.balance(db, "acc_1") == 70
    invariant(db)


def test_billing_off_meters_but_never_charges_or_refuses(db, settings, clock):
    hold = reserve(db, settings, clock(), prompt=10_000, completion=10_000)
    assert hold.amount_microusd == 0
    assert meter.settle(db, settings, hold, prompt_tokens=7, completion_tokens=3, now=clock()) == 0
    entry = ledger.entries(db, "acc_1", kinds=("usage",))[0]
    assert (entry.amount_microusd, entry.prompt_tokens, entry.completion_tokens) == (0, 7, 3)
    assert service.usage(db, "acc_1", clock())["days"][-1]["prompt_tokens"] == 7


def test_monthly_caps_per_instance_and_key_reset_at_the_month_boundary(db, on, clock):
    clock.now = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    fund(db, "acc_1", 10_000, clock())
    service.set_cap(db, "acc_1", "instance", "ins_a", "0.00006", clock())  # 60 µ$
    service.set_cap(db, "acc_1", "key", "key_b", "0.00003", clock())
    first = reserve(db, on, clock())
    meter.settle(db, on, first, prompt_tokens=10, completion_tokens=10, now=clock())
    reserve(db, on, clock())  # 30 settled + 30 held = 60: at the cap
    with pytest.raises(PaymentRequired, match="spend cap"):
        reserve(db, on, clock())
    reserve(db, on, clock(), instance="ins_other")  # another instance is not capped
    reserve(db, on, clock(), instance="ins_other", key="key_b")
    with pytest.raises(PaymentRequired, match="API key"):
        reserve(db, on, clock(), instance="ins_other", key="key_b")
    meter.expire_holds(db, clock() + timedelta(days=1))
    clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    reserve(db, on, clock())  # a new month
    caps = {c["subject_id"]: c for c in service.caps(db, "acc_1", clock())}
    assert caps["ins_a"]["spent_this_month_microusd"] == 30  # the new hold only
    invariant(db)


def make_instance(db, clock):
    _, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    created = instances.create(
        db, account.id, "owner", {"name": "bot"}, models=["tiny"], max_tokens_cap=64, now=clock()
    )
    return account, created


def funded_instance(settings, db, clock, price_hour: float, microusd: int):
    """Billing on with ``price_hour`` an instance hour, and an account's running instance
    with ``microusd`` of credit: (billing settings, account, instance)."""
    on = make_settings(
        settings.paths.data_dir,
        **{"billing.enabled": True, "billing.price_instance_hour": price_hour},
    )
    account, created = make_instance(db, clock)
    fund(db, account.id, microusd, clock())
    return on, account, created


def test_instance_time_per_minute_catches_up_and_stops_at_once(settings, db, clock):
    on, account, created = funded_instance(settings, db, clock, 0.6, 1_000_000)
    running = instances.running(db)
    clock.advance(minutes=10, seconds=30)
    assert meter.charge_instance_time(db, on, running, clock()) == 10
    assert meter.charge_instance_time(db, on, running, clock()) == 0  # idempotent
    assert ledger.balance(db, account.id) == 1_000_000 - 100_000  # 0.6 $/h = 10 000 µ$/min
    clock.advance(minutes=5)
    instances.set_state(db, account.id, "owner", created.id, "stopped", clock())
    clock.advance(hours=3)  # stopped: never charged, even when the worker comes late
    assert meter.charge_instance_time(db, on, instances.running(db), clock()) == 5
    instances.set_state(db, account.id, "owner", created.id, "running", clock())
    clock.advance(minutes=2)
    instances.set_state(db, account.id, "owner", created.id, "destroyed", clock())
    clock.advance(days=1)
    assert meter.charge_instance_time(db, on, instances.running(db), clock()) == 2
    minutes = sum(e.minutes for e in ledger.entries(db, account.id, kinds=("instance_time",)))
    assert minutes == 17
    assert ledger.balance(db, account.id) == 1_000_000 - 170_000
    invariant(db, account.id)


def test_instance_time_goes_to_zero_and_records_the_shortfall(settings, db, clock):
    on, account, _ = funded_instance(settings, db, clock, 6, 150_000)
    clock.advance(minutes=2)
    meter.charge_instance_time(db, on, instances.running(db), clock())
    entry = ledger.entries(db, account.id, kinds=("instance_time",))[0]
    assert (entry.amount_microusd, entry.shortfall_microusd) == (-150_000, 50_000)
    assert ledger.balance(db, account.id) == 0
    invariant(db, account.id)


def test_storage_is_charged_once_a_day(settings, db, clock):
    on = make_settings(
        settings.paths.data_dir,
        **{"billing.enabled": True, "billing.price_storage_gb_month": 3.0},
    )
    fund(db, "acc_1", 1_000_000, clock())
    assert meter.charge_storage(db, on, {"acc_1": 1_000_000_000}, clock()) == 1
    assert meter.charge_storage(db, on, {"acc_1": 1_000_000_000}, clock()) == 0
    assert ledger.balance(db, "acc_1") == 1_000_000 - 100_000  # 3 $ / 30 days in November


def test_the_ledger_is_append_only(db, clock):
    fund(db, "acc_1", 100, clock())
    with pytest.raises(Exception, match="append-only"):
        db.execute("update ledger_entries set amount_microusd = 1000000")
    with pytest.raises(Exception, match="CHECK"):
        db.execute("update billing_accounts set balance_microusd = -1")
    with pytest.raises(InvalidInput, match="below zero"):
        service.adjust(db, "acc_1", "-0.01", "more than there is", clock())
    invariant(db)


def test_pseudonymize_keeps_amounts_and_stripe_ids_but_not_the_account(db, on, clock):
    fund(db, "acc_1", 100, clock())
    db.execute(
        "insert into billing_topups (id, account_ref, kind, amount_microusd, currency, status, "
        "stripe_session_id, requested_by, created_at) values "
        "('top_1', 'acc_1', 'checkout', 100, 'usd', 'paid', 'cs_1', 'usr_1', ?)",
        [clock().isoformat()],
    )
    reserve(db, on, clock())
    service.set_cap(db, "acc_1", "key", "key_a", "1", clock())
    kept = pseudonymize_account(db, "acc_1", "ref_random")
    assert kept >= 3
    for table, (column, _) in KEPT.items():
        count = db.execute(
            f"select count(*) from {table} where {column} = 'acc_1'"  # noqa: S608
        ).fetchone()[0]
        assert count == 0, table
    assert ledger.balance(db, "ref_random") == 100
    row = db.execute(
        "select stripe_session_id, requested_by, amount_microusd from billing_topups"
    ).fetchone()
    assert row == ("cs_1", None, 100)
    invariant(db, "ref_random")


def test_minutes_before_an_erasure_are_charged_under_the_reference(settings, db, clock):
    on, account, created = funded_instance(settings, db, clock, 0.6, 1_000_000)
    clock.advance(minutes=3)
    instances.set_state(db, account.id, "owner", created.id, "destroyed", clock())
    pseudonymize_account(db, account.id, "erased_ref")
    clock.advance(minutes=5)
    assert meter.charge_instance_time(db, on, instances.running(db), clock()) == 3
    assert ledger.balance(db, "erased_ref") == 1_000_000 - 30_000
    assert ledger.balance(db, account.id) == 0
    invariant(db, "erased_ref")


def test_destroying_runs_what_goes_with_it_in_the_same_transaction(db, clock):
    account, created = make_instance(db, clock)

    def fails() -> None:
        raise InvalidInput("the conversations could not be deleted")

    with pytest.raises(InvalidInput):
        instances.set_state(db, account.id, "owner", created.id, "destroyed", clock(), also=fails)
    assert instances.get(db, account.id, created.id).state == "running"  # nothing changed
    ran = []
    instances.set_state(
        db, account.id, "owner", created.id, "destroyed", clock(), also=lambda: ran.append(1)
    )
    assert ran == [1]
    assert instances.get(db, account.id, created.id).state == "destroyed"
