"""The vector leg for mid-size accounts: exact KNN over an in-RAM copy of the vectors.

sqlite-vec's KNN reads and scores every vector of the account through SQLite's pages; the
same exact ranking as one float32 matrix product in NumPy took half the time at 100,000
chunks (docs/benchmarks.md). So an account with at least ``IN_RAM_FROM`` chunks gets its
vectors copied into a matrix, once per process, by a background thread with its own read
connection: vec0 answers until the copy is there, so no search waits for it. Later
searches add the rows written since (by chunk id); a deletion (the ``deletions`` counter
in ``kb_meta``, as for codes.py) drops the copy and a new one is made. The copies of all
accounts together stay under ``BUDGET_BYTES`` (the least recently searched is dropped
first); an account too large for it, or past ``codes.QUANTIZED_ABOVE``, is not copied.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.db import open_reader

log = logging.getLogger(__name__)

#: Below this many chunks in the account, vec0 is about as fast: no copy is made.
IN_RAM_FROM = 20_000
#: RAM for the copies of all accounts in one process (1,536 bytes a 384-dim chunk).
BUDGET_BYTES = 512 << 20

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str], _Matrix] = OrderedDict()
_loading: set[tuple[str, str]] = set()


@dataclass
class _Matrix:
    ids: np.ndarray  # int64, chunk ids
    vectors: np.ndarray  # float32, (chunks, dim)
    last_id: int
    deletions: str | None  # the kb_meta 'deletions' value when loaded


def nearest(store, path: str, account_id: str, vector: Sequence[float], k: int) -> list[int] | None:
    """The ``k`` chunks closest to ``vector``; None when the account has no copy (one is
    then made for the next searches if the account is large enough)."""
    key = (path, account_id)
    deletions = store.meta("deletions")
    with _lock:
        matrix = _cache.get(key)
        if matrix is not None and matrix.deletions == deletions:
            _cache.move_to_end(key)
        else:
            _cache.pop(key, None)
            matrix = None
    if matrix is None:
        chunks = store.account_chunks(account_id)
        if chunks >= IN_RAM_FROM and chunks * 4 * int(store.meta("embedding_dim")) <= BUDGET_BYTES:
            _start_loading(type(store), path, account_id)
        return None
    matrix = _refresh(store, key, matrix)
    if not len(matrix.ids):
        return []
    scores = matrix.vectors @ np.asarray(vector, dtype=np.float32)
    take = min(k, len(scores))
    best = np.argpartition(-scores, take - 1)[:take]
    return matrix.ids[best[np.argsort(-scores[best], kind="stable")]].tolist()


def _refresh(store, key: tuple[str, str], matrix: _Matrix) -> _Matrix:
    """``matrix`` with the account's chunks written since it was made."""
    newer = store.chunk_ids(key[1], matrix.last_id)
    if not newer:
        return matrix
    found = store.vectors(newer)
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    rows = np.frombuffer(b"".join(found.values()), dtype=np.float32)
    grown = _Matrix(
        np.concatenate([matrix.ids, ids]),
        np.concatenate([matrix.vectors, rows.reshape(len(found), matrix.vectors.shape[1])]),
        max(newer),
        matrix.deletions,
    )
    with _lock:
        if _cache.get(key) is matrix:
            _cache[key] = grown
            _evict()
    return grown


def _start_loading(store_type, path: str, account_id: str) -> None:
    key = (path, account_id)
    with _lock:
        if key in _loading:
            return
        _loading.add(key)
    threading.Thread(target=_load, args=(store_type, key), name="kb-matrix", daemon=True).start()


def _load(store_type, key: tuple[str, str]) -> None:
    """Copy the account's vectors, through a ``store_type`` (the KnowledgeStore) on a read
    connection of its own."""
    path, account_id = key
    try:
        db = open_reader(path)
        try:
            store = store_type(db)
            deletions = store.meta("deletions")
            ids, blob, dim = store.account_vectors(account_id)
        finally:
            db.close()
        if not ids:
            return
        vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(ids), dim)
        matrix = _Matrix(np.asarray(ids, dtype=np.int64), vectors, max(ids), deletions)
        with _lock:
            _cache[key] = matrix
            _evict()
    except Exception:  # the vec0 leg keeps answering; the next search tries again
        log.exception("copying the vectors of an account into RAM failed")
    finally:
        with _lock:
            _loading.discard(key)


def _evict() -> None:
    """Drop the least recently searched copies over the budget (call with ``_lock``)."""
    while _cache and sum(m.vectors.nbytes for m in _cache.values()) > BUDGET_BYTES:
        _cache.popitem(last=False)
