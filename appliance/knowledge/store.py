"""All SQL for documents, chunks, the FTS5 index and the vectors.

Virtual tables have no foreign keys: this store deletes a chunk's FTS5 and vector rows in
the same transaction as the chunk. Every read of tenant data filters by account id.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import sqlite_utils
from sqlite_utils.db import NotFoundError
from sqlite_vec import serialize_float32

from appliance.db import write_transaction
from appliance.knowledge import codes, matrix

#: Porter stems of query words already seen (the tokenizer never changes): word -> stem.
_stems: dict[str, str] = {}
_MAX_STEMS = 100_000
#: Per database file: (chunks when counted, the kb_meta 'deletions' value, stem -> count).
#: A count is read once from the index (reading a common word's whole posting list) and
#: kept until a deletion or until the index has grown by ``_RECOUNT_GROWTH``: until then a
#: kept count can only be below the true one, so a rare word is never taken for common.
_frequencies: dict[str, tuple[int, str | None, dict[str, int]]] = {}
_RECOUNT_GROWTH = 0.05


@dataclass(frozen=True)
class Document:
    id: str
    account_id: str
    uploaded_by: str | None
    filename: str
    kind: str
    size: int
    sha256: str
    status: str
    error: str | None
    chunks_total: int
    chunks_done: int
    embedding_model: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Chunk:
    position: int
    text: str
    page: int | None
    heading: str
    tokens: int


@dataclass(frozen=True)
class Collection:
    id: str
    name: str
    created_at: str
    documents: int = 0


#: The full-text leg. The unary + keeps SQLite from driving the join with the
#: chunks_by_account index, which would run the FTS5 match once per chunk of the account.
BM25_SQL = """select c.id from chunks_fts f join chunks c on c.id = f.rowid
              where chunks_fts match ? and +c.account_id = ?
              order by f.rank limit ?"""
#: Chunks of documents in the collections of a JSON array of ids (an instance's choice).
IN_COLLECTIONS = """c.document_id in (select document_id from collection_documents
                    where collection_id in (select value from json_each(?)))"""
BM25_IN_COLLECTIONS_SQL = BM25_SQL.replace("order by", f"and {IN_COLLECTIONS} order by")


class KnowledgeStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # documents
    def insert_document(self, doc: Document) -> None:
        self.db["documents"].insert(asdict(doc))

    def _documents(self, where: str, params: Sequence = (), **kwargs) -> list[Document]:
        return [Document(**row) for row in self.db["documents"].rows_where(where, params, **kwargs)]

    def _document(self, where: str, params: Sequence) -> Document | None:
        return next(iter(self._documents(where, params, limit=1)), None)

    def document(self, account_id: str, document_id: str) -> Document | None:
        return self._document("id = ? and account_id = ?", [document_id, account_id])

    def document_any(self, document_id: str) -> Document | None:
        """For the worker only: the task carries the id, not the account."""
        return self._document("id = ?", [document_id])

    def documents(self, account_id: str | None) -> list[Document]:
        """The account's documents, newest first (None: every account's)."""
        if account_id is None:
            return self._documents(None)
        return self._documents("account_id = ?", [account_id], order_by="created_at desc")

    def by_hash(self, account_id: str, sha256: str) -> Document | None:
        return self._document("account_id = ? and sha256 = ?", [account_id, sha256])

    def used_bytes(self, account_id: str) -> int:
        return self.db.execute(
            "select coalesce(sum(size), 0) from documents where account_id = ?", [account_id]
        ).fetchone()[0]

    def unfinished(self) -> list[Document]:
        return self._documents(
            "status in ('queued', 'extracting', 'embedding')", order_by="created_at"
        )

    def queued(self, limit: int) -> list[str]:
        rows = self.db["documents"].rows_where(
            "status = 'queued'", order_by="created_at", limit=limit, select="id"
        )
        return [row["id"] for row in rows]

    def set_status(self, document_id: str, status: str, now: str, **extra) -> None:
        """A document deleted meanwhile stays deleted."""
        with contextlib.suppress(NotFoundError):
            self.db["documents"].update(document_id, {"status": status, "updated_at": now, **extra})

    # collections
    def insert_collection(self, account_id: str, collection: Collection) -> None:
        row = asdict(collection)
        del row["documents"]
        self.db["collections"].insert({**row, "account_id": account_id})

    def collections(self, account_id: str) -> list[Collection]:
        rows = self.db.query(
            """select c.id, c.name, c.created_at, count(m.document_id) as documents
               from collections c left join collection_documents m on m.collection_id = c.id
               where c.account_id = ? group by c.id order by c.name collate nocase""",
            [account_id],
        )
        return [Collection(**row) for row in rows]

    def collection_by_name(self, account_id: str, name: str) -> Collection | None:
        rows = self.db["collections"].rows_where(
            "account_id = ? and name = ?", [account_id, name], select="id, name, created_at"
        )
        row = next(rows, None)
        return Collection(**row) if row else None

    def rename_collection(self, account_id: str, collection_id: str, name: str) -> int:
        return self.db.execute(
            "update collections set name = ? where id = ? and account_id = ?",
            [name, collection_id, account_id],
        ).rowcount

    def delete_collection(self, account_id: str, collection_id: str) -> int:
        """Delete a collection (its documents stay, in their other collections)."""
        return self.db.execute(
            "delete from collections where id = ? and account_id = ?", [collection_id, account_id]
        ).rowcount

    def memberships(self, account_id: str) -> dict[str, list[str]]:
        """Each document's collection ids."""
        found: dict[str, list[str]] = {}
        for row in self.db["collection_documents"].rows_where("account_id = ?", [account_id]):
            found.setdefault(row["document_id"], []).append(row["collection_id"])
        return found

    def set_memberships(
        self, account_id: str, document_id: str, collection_ids: Sequence[str]
    ) -> None:
        """Put a document in exactly ``collection_ids`` (call inside a transaction)."""
        self.db.execute("delete from collection_documents where document_id = ?", [document_id])
        self.add_memberships(account_id, [document_id], collection_ids)

    def add_memberships(
        self, account_id: str, document_ids: Sequence[str], collection_ids: Sequence[str]
    ) -> None:
        self.db.conn.executemany(
            "insert or ignore into collection_documents (collection_id, document_id, account_id) "
            "values (?, ?, ?)",
            [(c, d, account_id) for d in document_ids for c in collection_ids],
        )

    # chunks, FTS and vectors
    def ensure_vectors(self, dim: int, model: str) -> None:
        """Create the vec0 table for ``dim``-dimensional vectors (once)."""
        current = self.meta("embedding_dim")
        indexed = self.meta("embedding_model")
        if indexed and indexed != model and "unknown" not in (indexed, model):
            raise ValueError(
                f"the index was built with the embedding model '{indexed}', the service now "
                f"runs '{model}': run `appliance kb reindex`"
            )
        if current is not None and int(current) != dim:
            raise ValueError(
                f"the vector index holds {current}-dimensional vectors, the model gives {dim}: "
                "run `appliance kb reindex`"
            )
        if current is None:
            with write_transaction(self.db):
                self.db.execute(
                    "create virtual table if not exists chunk_vectors using vec0("
                    f"account_id text partition key, embedding float[{int(dim)}])"
                )
                self.set_meta("embedding_dim", str(dim))
                self.set_meta("embedding_model", model)

    def path(self) -> str:
        """The database's file ("" in memory): what per-file caches are keyed by."""
        return self.db.execute(
            "select file from pragma_database_list where name = 'main'"
        ).fetchone()[0]

    def has_vectors(self) -> bool:
        return self.meta("embedding_dim") is not None

    def meta(self, key: str) -> str | None:
        # Not rows_where: searches read this several times, and it checks the table first.
        row = self.db.execute("select value from kb_meta where key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db["kb_meta"].upsert({"key": key, "value": value}, pk="key")

    def add_chunks(
        self,
        document_id: str,
        account_id: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Insert chunks with their FTS5 rows and vectors (call inside a transaction)."""
        for chunk, vector in zip(chunks, vectors, strict=True):
            row = {**asdict(chunk), "document_id": document_id, "account_id": account_id}
            cursor = self.db.execute(
                """insert into chunks (document_id, account_id, position, text, page, heading,
                                       tokens, code)
                   values (:document_id, :account_id, :position, :text, :page, :heading,
                           :tokens, :code)""",
                {**row, "code": codes.code(vector)},
            )
            chunk_id = cursor.lastrowid
            self.db.execute(
                "insert into chunks_fts (rowid, text) values (?, ?)", [chunk_id, chunk.text]
            )
            self.db.execute(
                "insert into chunk_vectors (rowid, account_id, embedding) values (?, ?, ?)",
                [chunk_id, account_id, serialize_float32(list(vector))],
            )

    def delete_chunks(self, document_id: str) -> int:
        """Delete a document's chunks, FTS5 rows and vectors (call inside a transaction)."""
        rows = self.db.execute(
            "select id, text from chunks where document_id = ?", [document_id]
        ).fetchall()
        for chunk_id, text in rows:
            # External-content FTS5: the index entry is removed with the original text.
            self.db.execute(
                "insert into chunks_fts (chunks_fts, rowid, text) values ('delete', ?, ?)",
                [chunk_id, text],
            )
            if self.has_vectors():
                self.db.execute("delete from chunk_vectors where rowid = ?", [chunk_id])
        self.db.execute("delete from chunks where document_id = ?", [document_id])
        if rows:  # the in-RAM codes of searches (codes.py) reload from scratch
            self.set_meta("deletions", str(int(self.meta("deletions") or 0) + 1))
        return len(rows)

    def delete_document(self, document_id: str) -> None:
        self.delete_chunks(document_id)
        self.db.execute("delete from documents where id = ?", [document_id])

    def chunk_rows(self, ids: Sequence[int], account_id: str) -> dict[int, dict]:
        if not ids:
            return {}
        rows = self.db.query(
            """select c.id, c.document_id, c.text, c.page, c.heading, c.position, d.filename
               from chunks c join documents d on d.id = c.document_id
               where c.id in (select value from json_each(?)) and c.account_id = ?""",
            [json.dumps(list(ids)), account_id],
        )
        return {row["id"]: row for row in rows}

    def bm25(
        self, account_id: str, match: str, k: int, collections: Sequence[str] | None = None
    ) -> list[int]:
        """The top ``k`` chunk ids for ``match``; with ``collections``, only those of
        documents in them."""
        if collections is None:
            rows = self.db.execute(BM25_SQL, [match, account_id, k])
        else:
            rows = self.db.execute(
                BM25_IN_COLLECTIONS_SQL, [match, account_id, json.dumps(list(collections)), k]
            )
        return [row[0] for row in rows]

    def indexed_rows(self) -> int:
        """About how many chunks the full-text index holds, all accounts together (the
        largest chunk id: exact until chunks are deleted, then a little above)."""
        return self.db.execute("select coalesce(max(id), 0) from chunks").fetchone()[0]

    def document_frequencies(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks (all accounts) hold each word, as the index stems it.

        The stems come from a TEMP FTS5 table with the index's tokenizer (the vocabulary
        of its one row maps each word to its stem); the counts from ``chunks_vocab``,
        kept per process as ``_frequencies`` says.
        """
        missing = [word for word in words if word not in _stems]
        if missing:
            self.db.execute(
                "create virtual table if not exists temp.kb_query_words "
                "using fts5(word, tokenize='porter unicode61')"
            )
            self.db.execute(
                "create virtual table if not exists temp.kb_query_stems "
                "using fts5vocab(temp, kb_query_words, 'instance')"
            )
            self.db.execute("delete from temp.kb_query_words")
            self.db.conn.executemany(
                "insert into temp.kb_query_words (rowid, word) values (?, ?)",
                list(enumerate(missing)),
            )
            if len(_stems) > _MAX_STEMS:
                _stems.clear()
            for row in self.db.query("select doc, term from temp.kb_query_stems"):
                _stems[missing[row["doc"]]] = row["term"]
        path = self.path()
        rows, deletions = self.indexed_rows(), self.meta("deletions")
        known = _frequencies.get(path)
        if (
            not path  # in memory: nothing to key the counts by
            or known is None
            or known[1] != deletions
            or rows > known[0] * (1 + _RECOUNT_GROWTH)
            or len(known[2]) > _MAX_STEMS
        ):
            known = (rows, deletions, {})
            if path:
                _frequencies[path] = known
        counts = known[2]
        for word in words:
            stem = _stems.get(word, word)
            if stem not in counts:
                row = self.db.execute(
                    "select doc from chunks_vocab where term = ?", [stem]
                ).fetchone()
                counts[stem] = row[0] if row else 0
        return {word: counts[_stems.get(word, word)] for word in words}

    def account_chunks(self, account_id: str) -> int:
        return self.db["chunks"].count_where("account_id = ?", [account_id])

    def chunk_ids(self, account_id: str, after: int) -> list[int]:
        """The account's chunk ids above ``after``, in order."""
        sql = "select id from chunks where account_id = ? and id > ? order by id"
        return [row[0] for row in self.db.execute(sql, [account_id, after])]

    def account_vectors(
        self, account_id: str, batch: int = 10_000
    ) -> Iterator[tuple[list[int], bytes]]:
        """All the account's vectors, ``batch`` at a time: chunk ids, float32 rows joined."""
        cursor = self.db.execute(
            "select rowid, embedding from chunk_vectors where account_id = ?", [account_id]
        )
        while rows := cursor.fetchmany(batch):
            yield [row[0] for row in rows], b"".join(row[1] for row in rows)

    def codes(self, account_id: str, after: int) -> tuple[list[int], list[bytes]]:
        """The account's chunk ids above ``after`` with their vectors' sign bits."""
        rows = self.db.execute(
            "select id, code from chunks where account_id = ? and id > ? and code is not null "
            "order by id",
            [account_id, after],
        ).fetchall()
        return [row[0] for row in rows], [row[1] for row in rows]

    def vectors(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The stored float32 vectors of chunks ``ids`` (raw bytes), by id."""
        sql = "select embedding from chunk_vectors where rowid = ?"
        rows = ((i, self.db.execute(sql, [i]).fetchone()) for i in ids)
        return {chunk_id: row[0] for chunk_id, row in rows if row is not None}

    def nearest(
        self,
        account_id: str,
        vector: Sequence[float],
        k: int,
        collections: Sequence[str] | None = None,
    ) -> list[int]:
        """The ``k`` nearest chunk ids; with ``collections``, only those of documents in
        them (vec0's exact search over that subset)."""
        if not self.has_vectors():
            return []
        if collections is not None:
            blob, chosen = serialize_float32(list(vector)), json.dumps(list(collections))
            rows = self.db.execute(
                """select rowid from chunk_vectors
                   where embedding match ? and k = ? and account_id = ?
                   and rowid in (select c.id from chunks c where c.account_id = ?
                                 and c.document_id in (select document_id from collection_documents
                                 where collection_id in (select value from json_each(?))))
                   order by distance""",
                [blob, k, account_id, account_id, chosen],
            )
            return [row[0] for row in rows]
        if self.indexed_rows() >= codes.QUANTIZED_ABOVE:
            path = self.path()
            if codes.size(self, path, account_id) >= codes.QUANTIZED_ABOVE:
                return codes.nearest(self, path, account_id, vector, k)
        # vec0's exact KNN from the in-RAM copy of a large account's vectors (matrix.py)
        path = self.indexed_rows() >= matrix.IN_RAM_FROM and self.path()
        found = matrix.nearest(self, path, account_id, vector, k) if path else None
        if found is not None:
            return found
        rows = self.db.execute(
            """select rowid from chunk_vectors
               where embedding match ? and k = ? and account_id = ?
               order by distance""",
            [serialize_float32(list(vector)), k, account_id],
        )
        return [row[0] for row in rows]
