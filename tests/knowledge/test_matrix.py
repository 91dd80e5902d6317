"""Exact KNN over an in-RAM copy of an account's vectors (knowledge/matrix.py) against vec0.

Real SQLite with sqlite-vec, vectors written through the store's own write path (the
helpers of test_codes.py). ``IN_RAM_FROM`` is lowered so that a few thousand chunks are
enough for a copy.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlite_vec import serialize_float32

from appliance.db import write_transaction
from appliance.knowledge import matrix
from appliance.knowledge.store import KnowledgeStore
from tests.knowledge import test_codes

add, vectors, world = test_codes.add, test_codes.vectors, test_codes.world


def vec0(db, account_id: str, query, k: int) -> list[int]:
    rows = db.execute(
        "select rowid from chunk_vectors where embedding match ? and k = ? and account_id = ? "
        "order by distance",
        [serialize_float32(list(query)), k, account_id],
    )
    return [row[0] for row in rows]


def copied(store, path: str, account_id: str, probe) -> list[int]:
    """store.nearest once the account's copy is in RAM (it is made in the background)."""
    deadline = time.monotonic() + 30
    while (found := matrix.nearest(store, path, account_id, probe, 10)) is None:
        assert time.monotonic() < deadline, "the copy was never made"
        time.sleep(0.05)
    return found


@pytest.fixture(autouse=True)
def small_accounts(monkeypatch):
    monkeypatch.setattr(matrix, "IN_RAM_FROM", 500)


def test_the_copy_ranks_as_vec0_does(world):
    db, a, _, path, rng, centres = world
    store = KnowledgeStore(db)
    queries = vectors(rng, 20, centres)
    assert store.nearest(a, queries[0].tolist(), 10) == vec0(db, a, queries[0], 10)
    copied(store, path, a, queries[0])
    for query in queries:
        assert store.nearest(a, query.tolist(), 10) == vec0(db, a, query, 10)


def test_new_chunks_are_found_deleted_and_other_accounts_ones_never(world):
    db, a, b, path, rng, centres = world
    store = KnowledgeStore(db)
    probe = vectors(rng, 1, centres)
    copied(store, path, a, probe[0])
    add(db, a, "doc_new", probe)
    new_id = db.execute("select id from chunks where document_id = 'doc_new'").fetchone()[0]
    assert store.nearest(a, probe[0].tolist(), 1) == [new_id]
    b_ids = {r[0] for r in db.execute("select id from chunks where account_id = ?", [b])}
    b_vector = np.frombuffer(store.vectors([min(b_ids)])[min(b_ids)], dtype=np.float32)
    found = store.nearest(a, b_vector.tolist(), 50)
    assert len(found) == 50 and not set(found) & b_ids
    with write_transaction(db):
        store.delete_document("doc_new")
    assert new_id not in store.nearest(a, probe[0].tolist(), 50)  # vec0 until copied again
    assert new_id not in copied(store, path, a, probe[0])


def test_an_account_over_the_budget_stays_with_vec0(world, monkeypatch):
    db, a, _, path, rng, centres = world
    monkeypatch.setattr(matrix, "BUDGET_BYTES", 1000 * 384 * 4)  # one of A's 3,000 chunks
    store = KnowledgeStore(db)
    query = vectors(rng, 1, centres)[0]
    assert matrix.nearest(store, path, a, query, 10) is None  # and no copy is started
    time.sleep(0.5)
    assert matrix.nearest(store, path, a, query, 10) is None
    assert store.nearest(a, query.tolist(), 10) == vec0(db, a, query, 10)
