"""Schema of the auth domain. Never edit a landed migration; add a new one."""

import sqlite_utils


def m001_create_auth(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table otp_codes (
            id text primary key,
            attempt_hash text not null,
            email text not null,
            code_mac text not null,
            created_at text not null,
            expires_at text not null,
            used_at text,
            voided_at text,
            failures integer not null default 0
        );
        create index otp_codes_by_email on otp_codes(email, created_at);
        create table sessions (
            id_hash text primary key,
            user_id text not null references users(id) on delete cascade,
            account_id text not null references accounts(id) on delete cascade,
            created_at text not null,
            last_seen_at text not null,
            expires_at text not null,
            revoked_at text
        );
        create index sessions_by_user on sessions(user_id);
        create table api_keys (
            id text primary key,
            prefix text not null,
            key_hash text not null unique,
            name text not null,
            scope text not null check (scope in ('inference', 'manage')),
            account_id text not null references accounts(id) on delete cascade,
            user_id text not null references users(id) on delete cascade,
            instance_id text,
            created_at text not null,
            expires_at text,
            last_used_at text,
            revoked_at text
        );
        create index api_keys_by_account on api_keys(account_id);
        create table auth_events (
            id integer primary key autoincrement,
            kind text not null,
            subject text not null,
            at text not null
        );
        create index auth_events_by_subject on auth_events(kind, subject, at);
        """
    )


def m002_admin_key_scope(db: sqlite_utils.Database) -> None:
    """Keys may have scope ``admin`` (operator actions; created by the CLI only).

    SQLite cannot change a CHECK constraint, so the table is rebuilt with the same rows.
    """
    db.executescript(
        """
        create table api_keys_new (
            id text primary key,
            prefix text not null,
            key_hash text not null unique,
            name text not null,
            scope text not null check (scope in ('inference', 'manage', 'admin')),
            account_id text not null references accounts(id) on delete cascade,
            user_id text not null references users(id) on delete cascade,
            instance_id text,
            created_at text not null,
            expires_at text,
            last_used_at text,
            revoked_at text
        );
        insert into api_keys_new select id, prefix, key_hash, name, scope, account_id, user_id,
            instance_id, created_at, expires_at, last_used_at, revoked_at from api_keys;
        drop table api_keys;
        alter table api_keys_new rename to api_keys;
        create index api_keys_by_account on api_keys(account_id);
        """
    )


def m003_sessions_before_an_account(db: sqlite_utils.Database) -> None:
    """A session may have no account yet: someone invited who has not accepted (or
    declined) any invite. SQLite cannot drop a NOT NULL, so the table is rebuilt."""
    db.execute(
        """create table sessions_new (
            id_hash text primary key,
            user_id text not null references users(id) on delete cascade,
            account_id text references accounts(id) on delete cascade,
            created_at text not null,
            last_seen_at text not null,
            expires_at text not null,
            revoked_at text
        )"""
    )
    db.execute("insert into sessions_new select * from sessions")
    db.execute("drop table sessions")
    db.execute("alter table sessions_new rename to sessions")
    db.execute("create index sessions_by_user on sessions(user_id)")
