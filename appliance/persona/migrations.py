"""Schema of the persona domain. Never edit a landed migration; add a new one."""

import sqlite_utils


def m001_create_persona(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table system_prompts (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            version integer not null,
            text text not null,
            source text not null check (source in ('local', 'claude', 'edited')),
            created_at text not null,
            created_by text references users(id) on delete set null,
            unique (account_id, version)
        );
        create table egress_log (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            at text not null,
            service text not null,
            purpose text not null,
            data_categories text not null,
            bytes_sent integer not null,
            outcome text not null
        );
        create index egress_log_by_account on egress_log(account_id, at);
        create table voice_samples (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            filename text not null,
            kind text not null check (kind in ('txt', 'md', 'docx')),
            size integer not null,
            sha256 text not null,
            created_at text not null,
            unique (account_id, sha256)
        );
        create table voice_excerpts (
            id text primary key,
            sample_id text not null references voice_samples(id) on delete cascade,
            account_id text not null references accounts(id) on delete cascade,
            text text not null,
            position integer not null
        );
        create index voice_excerpts_by_sample on voice_excerpts(sample_id, position);
        create index voice_excerpts_by_account on voice_excerpts(account_id);
        """
    )
