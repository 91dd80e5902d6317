"""Schema of the instances domain. Never edit a landed migration; add a new one."""

import sqlite_utils


def m001_create_instances(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table instances (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            name text not null,
            model text not null,
            temperature real not null,
            top_p real not null,
            max_tokens integer not null,
            context_budget integer not null,
            system_prompt text,
            voice integer not null default 1,
            knowledge integer not null default 1,
            top_k integer not null default 5,
            state text not null check (state in ('running', 'stopped', 'destroyed')),
            created_at text not null,
            updated_at text not null
        );
        create unique index instances_name on instances(account_id, name)
            where state != 'destroyed';
        """
    )


def m002_add_collections(db: sqlite_utils.Database) -> None:
    """The knowledge collections an instance searches: a JSON array of collection ids,
    null for every document of the account."""
    db.execute("alter table instances add column collections text")
