"""The binary first pass of the vector leg (knowledge/codes.py) against exact KNN.

Real SQLite with sqlite-vec; vectors are clustered random unit vectors (seeded), written
through the store's own write path. The first pass is called directly: the store uses it
only above QUANTIZED_ABOVE chunks, which these tests do not need to reach.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import stored_document

from appliance.accounts import service as accounts
from appliance.db import write_transaction
from appliance.knowledge import codes, migrations
from appliance.knowledge.store import Chunk, KnowledgeStore

DIM = 384


def vectors(rng, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add(db, account_id: str, doc_id: str, rows: np.ndarray) -> None:
    chunks = [Chunk(i, f"chunk {i} of {doc_id}", None, "", 3) for i in range(len(rows))]
    stored_document(db, account_id, doc_id, chunks, rows.tolist())


@pytest.fixture
def world(db, clock):
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((50, DIM))
    a = accounts.create_user(db, "a@example.com", clock(), account_name="A")[1].id
    b = accounts.create_user(db, "b@example.org", clock(), account_name="B")[1].id
    for n in range(3):
        add(db, a, f"doc_a{n}", vectors(rng, 1000, centres))
    add(db, b, "doc_b", vectors(rng, 1000, centres))
    path = db.execute("select file from pragma_database_list where name = 'main'").fetchone()[0]
    return db, a, b, path, rng, centres


def test_first_pass_and_rescoring_find_what_exact_knn_finds(world):
    db, a, _, path, rng, centres = world
    store = KnowledgeStore(db)
    overlap = []
    for query in vectors(rng, 30, centres):
        exact = store.nearest(a, query.tolist(), 10)  # below the threshold: vec0's exact KNN
        overlap.append(len(set(codes.nearest(store, path, a, query, 10)) & set(exact)) / 10)
    assert np.mean(overlap) >= 0.95


def test_new_chunks_are_found_and_deleted_ones_never(world):
    db, a, _, path, rng, centres = world
    store = KnowledgeStore(db)
    probe = vectors(rng, 1, centres)
    codes.nearest(store, path, a, probe[0], 10)  # the account's codes are now cached
    add(db, a, "doc_new", probe)
    new_id = db.execute("select id from chunks where document_id = 'doc_new'").fetchone()[0]
    assert codes.nearest(store, path, a, probe[0], 1) == [new_id]
    with write_transaction(db):
        store.delete_document("doc_new")
    assert new_id not in codes.nearest(store, path, a, probe[0], 50)


def test_another_accounts_chunks_never_come_back(world):
    db, a, b, path, _, _ = world
    store = KnowledgeStore(db)
    b_ids = {r[0] for r in db.execute("select id from chunks where account_id = ?", [b])}
    b_vector = np.frombuffer(store.vectors([min(b_ids)])[min(b_ids)], dtype=np.float32)
    found = codes.nearest(store, path, a, b_vector, 50)
    assert len(found) == 50 and not set(found) & b_ids
    assert codes.nearest(store, path, b, b_vector, 1) == [min(b_ids)]


def test_the_migration_fills_in_codes_for_existing_vectors(world):
    db = world[0]
    expected = dict(db.execute("select id, code from chunks").fetchall())
    db.executescript(
        "drop index chunks_by_account; alter table chunks drop column code;"
    )  # the schema before m003
    migrations.m003_add_chunk_codes(db)
    assert dict(db.execute("select id, code from chunks").fetchall()) == expected
    assert all(len(code) == DIM // 8 for code in expected.values())
