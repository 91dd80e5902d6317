"""Schema of the billing domain. Never edit a landed migration; add a new one.

Billing rows carry ``account_ref`` rather than a foreign key to ``accounts``: they must
survive the account's deletion for the tax-retention period, pseudonymized (the account
id replaced by a random reference, see ``appliance.billing.service.pseudonymize_account``).
"""

import sqlite_utils

#: Columns of ledger_entries that may never change once written (append-only).
FROZEN_LEDGER_COLUMNS = (
    "id",
    "kind",
    "amount_microusd",
    "balance_microusd",
    "shortfall_microusd",
    "created_at",
    "instance_id",
    "key_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "minutes",
    "period",
    "topup_id",
    "stripe_ref",
    "reason",
)


def m001_create_billing(db: sqlite_utils.Database) -> None:
    changed = " or ".join(f"new.{c} is not old.{c}" for c in FROZEN_LEDGER_COLUMNS)
    db.executescript(
        f"""
        create table billing_accounts (
            account_ref text primary key,
            balance_microusd integer not null default 0 check (balance_microusd >= 0),
            stripe_customer_id text unique,
            payment_method_id text,
            card_brand text,
            card_last4 text,
            low_balance_notified_at text,
            updated_at text not null
        );
        create table ledger_entries (
            id text primary key,
            account_ref text not null,
            kind text not null check (kind in (
                'topup', 'usage', 'instance_time', 'storage', 'refund', 'dispute',
                'adjustment')),
            amount_microusd integer not null,
            balance_microusd integer not null check (balance_microusd >= 0),
            shortfall_microusd integer not null default 0 check (shortfall_microusd >= 0),
            created_at text not null,
            instance_id text,
            key_id text,
            model text,
            prompt_tokens integer,
            completion_tokens integer,
            minutes integer,
            period text,
            topup_id text,
            stripe_ref text,
            reason text,
            actor_ref text
        );
        create index ledger_entries_account on ledger_entries(account_ref, created_at);
        create unique index ledger_entries_topup on ledger_entries(topup_id)
            where kind = 'topup';
        create unique index ledger_entries_dispute on ledger_entries(stripe_ref)
            where kind = 'dispute';
        create unique index ledger_entries_storage on ledger_entries(account_ref, period)
            where kind = 'storage';
        create trigger ledger_entries_append_only before update on ledger_entries
            when {changed}
            begin select raise(abort, 'ledger entries are append-only'); end;
        create table billing_holds (
            id text primary key,
            account_ref text not null,
            instance_id text,
            key_id text,
            model text,
            amount_microusd integer not null check (amount_microusd >= 0),
            state text not null check (state in ('held', 'settled', 'released', 'expired')),
            created_at text not null,
            expires_at text not null,
            closed_at text
        );
        create index billing_holds_active on billing_holds(account_ref) where state = 'held';
        create index billing_holds_expiry on billing_holds(expires_at) where state = 'held';
        create table billing_topups (
            id text primary key,
            account_ref text not null,
            kind text not null check (kind in ('checkout', 'auto')),
            amount_microusd integer not null check (amount_microusd > 0),
            currency text not null,
            status text not null check (status in ('pending', 'paid', 'failed')),
            stripe_session_id text unique,
            stripe_payment_intent_id text,
            stripe_customer_id text,
            requested_by text,
            created_at text not null,
            paid_at text
        );
        create index billing_topups_account on billing_topups(account_ref, created_at);
        create index billing_topups_intent on billing_topups(stripe_payment_intent_id);
        create table stripe_events (
            id text primary key,
            type text not null,
            account_ref text,
            outcome text not null,
            received_at text not null
        );
        create table spend_caps (
            subject text not null check (subject in ('instance', 'key')),
            subject_id text not null,
            account_ref text not null,
            monthly_cap_microusd integer not null check (monthly_cap_microusd >= 0),
            updated_at text not null,
            primary key (subject, subject_id)
        );
        create table instance_meter (
            instance_id text primary key,
            account_ref text not null,
            running_since text,
            charged_until text not null,
            pending_minutes integer not null default 0,
            minutes_total integer not null default 0
        );
        """
    )


def m002_spend_months(db: sqlite_utils.Database) -> None:
    # Monthly usage per instance and per key, kept with each settle, so the spend-cap check
    # is one row lookup instead of a sum over the month's ledger entries (17 ms at 100k
    # entries, docs/benchmarks.md); closed holds are purged by closed_at.
    db.executescript(
        """
        create table spend_months (
            subject text not null check (subject in ('instance', 'key')),
            subject_id text not null,
            month text not null,
            account_ref text not null,
            spent_microusd integer not null default 0,
            primary key (subject, subject_id, month)
        );
        create index spend_months_account on spend_months(account_ref);
        insert into spend_months (subject, subject_id, month, account_ref, spent_microusd)
            select 'instance', instance_id, substr(created_at, 1, 7), account_ref,
                   -sum(amount_microusd)
            from ledger_entries where kind = 'usage' and instance_id is not null
            group by instance_id, substr(created_at, 1, 7), account_ref;
        insert into spend_months (subject, subject_id, month, account_ref, spent_microusd)
            select 'key', key_id, substr(created_at, 1, 7), account_ref, -sum(amount_microusd)
            from ledger_entries where kind = 'usage' and key_id is not null
            group by key_id, substr(created_at, 1, 7), account_ref;
        create index billing_holds_closed on billing_holds(closed_at) where state != 'held';
        """
    )
