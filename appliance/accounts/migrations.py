"""Schema of the accounts domain. Never edit a landed migration; add a new one."""

import sqlite_utils


def m001_create_accounts(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table accounts (
            id text primary key,
            name text not null,
            status text not null default 'active'
                check (status in ('active', 'suspended', 'deleted')),
            created_at text not null
        );
        create table users (
            id text primary key,
            email text not null unique,
            operator integer not null default 0,
            created_at text not null,
            last_sign_in_at text
        );
        create table memberships (
            account_id text not null references accounts(id) on delete cascade,
            user_id text not null references users(id) on delete cascade,
            role text not null check (role in ('owner', 'admin', 'member')),
            created_at text not null,
            primary key (account_id, user_id)
        );
        create index memberships_by_user on memberships(user_id);
        create table invites (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            email text not null,
            role text not null check (role in ('owner', 'admin', 'member')),
            invited_by text references users(id) on delete set null,
            created_at text not null,
            expires_at text not null,
            accepted_at text,
            revoked_at text
        );
        create index invites_by_email on invites(email);
        create table profiles (
            account_id text primary key references accounts(id) on delete cascade,
            business_name text not null default '',
            intended_use text not null default '',
            tone text not null default '',
            formality text not null default '',
            length text not null default '',
            language text not null default '',
            age_confirmed integer not null default 0,
            completed_at text,
            skipped_at text,
            updated_at text not null
        );
        """
    )


def m002_invite_choices(db: sqlite_utils.Database) -> None:
    """Invites are accepted or declined by the invited person (no longer at sign-in), and
    sign-in lands in the account the user used last."""
    db.execute("alter table invites add column declined_at text")
    db.execute(
        "alter table users add column last_account_id text "
        "references accounts(id) on delete set null"
    )
