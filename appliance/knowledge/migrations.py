"""Schema of the knowledge base. Never edit a landed migration; add a new one.

The vector table (vec0) is created on first use, when the embedding dimension is known
(see store.ensure_vectors).
"""

import sqlite_utils


def m001_create_documents(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        create table documents (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            uploaded_by text references users(id) on delete set null,
            filename text not null,
            kind text not null,
            size integer not null,
            sha256 text not null,
            status text not null
                check (status in ('queued', 'extracting', 'embedding', 'ready', 'failed')),
            error text,
            chunks_total integer not null default 0,
            chunks_done integer not null default 0,
            embedding_model text,
            created_at text not null,
            updated_at text not null,
            unique (account_id, sha256)
        );
        create index documents_by_account on documents(account_id, created_at);
        create table chunks (
            id integer primary key,
            document_id text not null references documents(id) on delete cascade,
            account_id text not null,
            position integer not null,
            text text not null,
            page integer,
            heading text not null default '',
            tokens integer not null default 0
        );
        create index chunks_by_document on chunks(document_id, position);
        create virtual table chunks_fts using fts5(
            text, content='chunks', content_rowid='id', tokenize='porter unicode61'
        );
        insert into chunks_fts(chunks_fts, rank) values ('secure-delete', 1);
        create table kb_meta (key text primary key, value text not null);
        """
    )


def m002_create_chunks_vocab(db: sqlite_utils.Database) -> None:
    """Document frequencies of the full-text index's terms (no storage of its own): the
    search leaves the query's common words out of its BM25 leg."""
    db.execute("create virtual table chunks_vocab using fts5vocab(chunks_fts, 'row')")


def m003_add_chunk_codes(db: sqlite_utils.Database) -> None:
    """The sign bits of each chunk's vector (the vector leg's binary first pass for large
    accounts, knowledge/codes.py), filled in for the vectors already there."""
    import numpy as np

    db.executescript(
        """
        alter table chunks add column code blob;
        create index chunks_by_account on chunks(account_id, id);
        """
    )
    exists = db.execute(
        "select 1 from sqlite_master where name = 'chunk_vectors' and type = 'table'"
    ).fetchone()
    if not exists:
        return
    rows = db.execute("select rowid, embedding from chunk_vectors")
    while batch := rows.fetchmany(10_000):
        db.conn.executemany(
            "update chunks set code = ? where id = ?",
            [(np.packbits(np.frombuffer(blob, np.float32) > 0).tobytes(), rowid)
             for rowid, blob in batch],
        )  # fmt: skip


def m004_create_collections(db: sqlite_utils.Database) -> None:
    """Collections: named groups of an account's documents (a document may be in several);
    an instance may be limited to some of them (``instances.collections``)."""
    db.executescript(
        """
        create table collections (
            id text primary key,
            account_id text not null references accounts(id) on delete cascade,
            name text not null,
            created_at text not null
        );
        create unique index collections_name on collections(account_id, name);
        create table collection_documents (
            collection_id text not null references collections(id) on delete cascade,
            document_id text not null references documents(id) on delete cascade,
            account_id text not null,
            primary key (collection_id, document_id)
        );
        create index collection_documents_by_document on collection_documents(document_id);
        """
    )
