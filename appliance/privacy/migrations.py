"""Schema of the privacy domain. Never edit a landed migration; add a new one.

(One exception, a move: ``deletion_receipts`` went from m001 here to the receipts
domain's m001, ``create table if not exists`` with the same columns, so databases made
before keep theirs and new ones get the same table.)
"""

import sqlite_utils


def m001_create_privacy(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table request_log (
            id integer primary key,
            at text not null,
            method text not null,
            path text not null,
            status integer not null,
            duration_ms real not null,
            instance_id text,
            error text
        );
        create index request_log_by_at on request_log(at);
        create table policy_versions (
            version integer primary key,
            text_sha256 text not null,
            published_at text not null,
            effective_at text not null,
            summary text not null default ''
        );
        create table policy_acceptances (
            user_id text not null references users(id) on delete cascade,
            version integer not null references policy_versions(version),
            accepted_at text not null,
            primary key (user_id, version)
        );
        create table purge_runs (
            id integer primary key,
            job text not null,
            started_at text not null,
            finished_at text,
            deleted integer not null default 0,
            complete integer not null default 0
        );
        create index purge_runs_by_job on purge_runs(job, started_at);
        create table account_deletions (
            account_id text primary key,
            requested_at text not null,
            requested_by text not null,
            request text not null,
            notify_email text,
            user_ids text not null default '[]',
            progress text not null default '{}',
            due_at text not null,
            erased_at text
        );
        create table exports (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            user_id text not null references users(id) on delete cascade,
            status text not null check (status in ('queued', 'building', 'ready', 'failed')),
            progress integer not null default 0,
            total integer not null default 0,
            size integer not null default 0,
            sha256 text,
            created_at text not null,
            finished_at text,
            expires_at text not null
        );
        create index exports_by_account on exports(account_id, created_at);
        """
    )


def m002_policy_text(db: sqlite_utils.Database) -> None:
    # The published text itself, so the page shows what is in effect (not whatever the
    # settings say today) and an acceptance can be traced to the exact words.
    db.execute("alter table policy_versions add column text text not null default ''")


def m003_policy_operator(db: sqlite_utils.Database) -> None:
    """Who runs the appliance, as the privacy policy names them (first-run setup, /admin):
    one row."""
    db.execute(
        """create table policy_operator (
               id integer primary key check (id = 1),
               name text not null,
               contact text not null,
               updated_at text not null
           )"""
    )
