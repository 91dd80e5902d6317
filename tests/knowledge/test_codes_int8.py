"""The int8 stage of the vector leg for large accounts (codes.py with matrix.quantized).

Real SQLite with sqlite-vec, vectors written through the store's own write path (the
helpers of test_codes.py). ``IN_RAM_FROM`` is lowered so that a few hundred chunks are
enough for a copy; the copy is made in the background, so the tests wait for it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from appliance.accounts import service as accounts
from appliance.db import write_transaction
from appliance.knowledge import codes, matrix
from appliance.knowledge.store import KnowledgeStore
from tests.knowledge import test_codes

DIM = test_codes.DIM
add, vectors, world = test_codes.add, test_codes.vectors, test_codes.world


@pytest.fixture(autouse=True)
def small_accounts(monkeypatch):
    monkeypatch.setattr(matrix, "IN_RAM_FROM", 100)


def int8_copy(store, path: str, account_id: str):
    deadline = time.monotonic() + 30
    while (copy := matrix.quantized(store, path, account_id)) is None:
        assert time.monotonic() < deadline, "the int8 copy was never made"
        time.sleep(0.05)
    return copy


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_the_int8_stage_finds_the_nearest_chunk_the_sign_bits_rank_far(db, clock, monkeypatch):
    """The query's sign bits are all positive. 300 decoys share them all (Hamming distance
    0) but point elsewhere; the true nearest chunk has half its signs flipped (distance
    ~190); 300 more decoys have every sign flipped (distance 384). The first pass's 10
    closest are all decoys; its 400 closest hold the true one, which the int8 copy ranks
    first."""
    monkeypatch.setattr(codes, "CANDIDATES", 400)
    monkeypatch.setattr(codes, "RESCORE", 10)
    monkeypatch.setattr(codes, "RERANKED", 10)
    rng = np.random.default_rng(5)
    a, b = (accounts.create_user(db, f"{n}@example.com", clock())[1].id for n in "ab")
    query = unit(np.r_[1.0, np.full(DIM - 1, 0.001)])
    near = unit(np.r_[0.9, np.where(np.arange(DIM - 1) % 2, 0.02, -0.02)])
    decoys = unit(np.abs(rng.standard_normal((300, DIM))))
    add(db, a, "doc_decoys", np.concatenate([decoys, -decoys]))
    add(db, a, "doc_near", near[None])
    add(db, b, "doc_b", np.concatenate([query[None], decoys[:200]]))  # B's copy of the query
    store = KnowledgeStore(db)
    path = db.execute("select file from pragma_database_list where name = 'main'").fetchone()[0]
    near_id, b_id = (
        db.execute("select min(id) from chunks where document_id = ?", [d]).fetchone()[0]
        for d in ("doc_near", "doc_b")
    )
    assert near_id not in codes.nearest(store, path, a, query, 5, int8=False)  # today's path
    int8_copy(store, path, a)
    assert codes.nearest(store, path, a, query, 1) == [near_id]
    int8_copy(store, path, b)
    assert codes.nearest(store, path, b, query, 1) == [b_id]
    b_ids = {r[0] for r in db.execute("select id from chunks where account_id = ?", [b])}
    assert not set(codes.nearest(store, path, a, query, 50)) & b_ids


def test_the_int8_stage_keeps_what_exact_knn_finds(world):
    db, a, b, path, rng, centres = world
    store = KnowledgeStore(db)
    copy = int8_copy(store, path, a)
    assert copy.vectors.dtype == np.int8 and len(copy.ids) == 3000
    b_ids = {r[0] for r in db.execute("select id from chunks where account_id = ?", [b])}
    overlap = []
    for query in vectors(rng, 30, centres):
        exact = store.nearest(a, query.tolist(), 10)  # 3,000 chunks: vec0's exact KNN
        found = codes.nearest(store, path, a, query, 10)
        assert not set(found) & b_ids
        overlap.append(len(set(found) & set(exact)) / 10)
    assert np.mean(overlap) >= 0.95


def test_new_chunks_are_found_and_deleted_ones_never(world):
    db, a, _, path, rng, centres = world
    store = KnowledgeStore(db)
    probe = vectors(rng, 1, centres)
    int8_copy(store, path, a)
    add(db, a, "doc_new", probe)
    new_id = db.execute("select id from chunks where document_id = 'doc_new'").fetchone()[0]
    assert codes.nearest(store, path, a, probe[0], 1) == [new_id]
    assert new_id in matrix.quantized(store, path, a).ids  # added to the copy
    with write_transaction(db):
        store.delete_document("doc_new")
    assert matrix.quantized(store, path, a) is None  # dropped, made again
    assert new_id not in codes.nearest(store, path, a, probe[0], 50)
    assert new_id not in int8_copy(store, path, a).ids


def test_int8_and_float_copies_share_one_budget(world, monkeypatch):
    db, a, b, path, _, _ = world
    store = KnowledgeStore(db)
    a_int8, b_float = 3000 * (DIM + 8 + 4), 1000 * (4 * DIM + 8)
    monkeypatch.setattr(matrix, "BUDGET_BYTES", a_int8 + b_float - 1)
    assert int8_copy(store, path, a).nbytes == a_int8  # a float32 copy would not fit
    deadline = time.monotonic() + 30
    while matrix.nearest(store, path, b, np.ones(DIM), 1) is None:  # B's float32 copy
        assert time.monotonic() < deadline, "B's copy was never made"
        time.sleep(0.05)
    assert matrix.quantized(store, path, a) is None  # A's was dropped for it: one budget


def test_the_first_pass_takes_the_n_closest_codes(world):
    db, a, _, path, rng, centres = world
    store = KnowledgeStore(db)
    ids, blobs = store.codes(a, 0)
    bits = np.unpackbits(np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(ids), -1))
    bits = bits.reshape(len(ids), -1)
    for query in vectors(rng, 5, centres):
        distance = dict(zip(ids, (bits != (query > 0)).sum(axis=1), strict=True))
        for n in (1, 7, 400, 2999):
            found = codes.first_pass(codes._codes(store, path, a), query, n)
            assert len(set(found.tolist())) == n
            assert max(distance[i] for i in found.tolist()) == sorted(distance.values())[n - 1]
        assert len(codes.first_pass(codes._codes(store, path, a), query, 5000)) == 3000
