"""Schema of the chat domain. Never edit a landed migration; add a new one."""

import sqlite_utils
from sqlite_utils import Migrations

migrations = Migrations("chat")


@migrations()
def m001_create_conversations(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table conversations (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            user_id text not null references users(id) on delete cascade,
            instance_id text not null references instances(id) on delete cascade,
            title text not null,
            source text not null default 'web' check (source in ('web', 'api')),
            generating_since text,
            created_at text not null,
            updated_at text not null
        );
        create index conversations_by_user on conversations(account_id, user_id, updated_at);
        create index conversations_by_instance on conversations(instance_id);
        -- seq is the FTS rowid: an INTEGER PRIMARY KEY survives VACUUM, an implicit rowid
        -- does not.
        create table messages (
            seq integer primary key,
            id text not null unique,
            conversation_id text not null references conversations(id) on delete cascade,
            account_id text not null,
            position integer not null,
            role text not null check (role in ('user', 'assistant')),
            content text not null,
            finish_reason text,
            prompt_tokens integer not null default 0,
            completion_tokens integer not null default 0,
            cached_tokens integer not null default 0,
            sources text not null default '[]',
            model text,
            created_at text not null,
            unique (conversation_id, position)
        );
        create virtual table messages_fts using fts5(
            content, content='messages', content_rowid='seq', tokenize='porter unicode61'
        );
        insert into messages_fts(messages_fts, rank) values ('secure-delete', 1);
        -- The index follows the table whatever deletes the rows (a conversation's
        -- cascade included), so no code path can leave message text in the index.
        create trigger messages_fts_insert after insert on messages begin
            insert into messages_fts (rowid, content) values (new.seq, new.content);
        end;
        create trigger messages_fts_delete after delete on messages begin
            insert into messages_fts (messages_fts, rowid, content)
                values ('delete', old.seq, old.content);
        end;
        create trigger messages_fts_update after update of content on messages begin
            insert into messages_fts (messages_fts, rowid, content)
                values ('delete', old.seq, old.content);
            insert into messages_fts (rowid, content) values (new.seq, new.content);
        end;
        """
    )
