"""Schema of the chat domain. Never edit a landed migration; add a new one."""

import sqlite_utils


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


def m002_message_versions(db: sqlite_utils.Database) -> None:
    """Messages form a tree: regenerating or editing adds a sibling (a version) instead of
    deleting. ``parent_id`` is the message it follows (null for the first); among siblings
    the ``selected`` one is on the conversation's current line. ``position`` stays the depth,
    no longer unique. The table is rebuilt (SQLite cannot drop a constraint); ``seq`` is
    kept, so the FTS index stays valid."""
    db.executescript(
        """
        drop trigger messages_fts_insert;
        drop trigger messages_fts_delete;
        drop trigger messages_fts_update;
        create table messages_v2 (
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
            parent_id text,
            selected integer not null default 1
        );
        insert into messages_v2
            select m.seq, m.id, m.conversation_id, m.account_id, m.position, m.role, m.content,
                   m.finish_reason, m.prompt_tokens, m.completion_tokens, m.cached_tokens,
                   m.sources, m.model, m.created_at,
                   (select p.id from messages p where p.conversation_id = m.conversation_id
                    and p.position = m.position - 1),
                   1
            from messages m order by m.seq;
        drop table messages;
        alter table messages_v2 rename to messages;
        create index messages_by_conversation on messages(conversation_id, position);
        create index messages_by_parent on messages(parent_id);
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
