"""In-RAM copies of large accounts' vectors: float32 for exact KNN, int8 for re-ranking.

sqlite-vec's KNN reads and scores every vector of the account through SQLite's pages; the
same exact ranking as one float32 matrix product in NumPy took half the time at 100,000
chunks (docs/benchmarks.md). So an account with at least ``IN_RAM_FROM`` chunks gets its
vectors copied into a matrix, once per process, by a background thread with its own read
connection: vec0 answers until the copy is there, so no search waits for it. Later
searches add the rows written since (by chunk id); a deletion (the ``deletions`` counter
in ``kb_meta``, as for codes.py) drops the copy and a new one is made.

An account past ``codes.QUANTIZED_ABOVE`` gets an int8 copy instead (``quantized``): each
vector scaled by its largest component to -127..127, a quarter of the float32 size (384 MB
at 1M chunks of 384 dimensions); codes.py re-ranks the binary first pass's candidates with
it. The copies of all accounts together, of both kinds, stay under ``BUDGET_BYTES`` (the
least recently searched is dropped first); an account too large for it is not copied.
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
#: RAM for the copies of all accounts in one process (a 384-dim chunk: 1,544 bytes in a
#: float32 copy, 396 in an int8 one, its id included).
BUDGET_BYTES = 512 << 20

_lock = threading.Lock()
#: Copies by (database path, account id, int8 or not).
_cache: OrderedDict[tuple[str, str, bool], _Matrix] = OrderedDict()
_loading: set[tuple[str, str, bool]] = set()


@dataclass
class _Matrix:
    ids: np.ndarray  # int64, chunk ids, ascending
    vectors: np.ndarray  # float32 or int8, (chunks, dim)
    scales: np.ndarray | None  # int8 copies: float32 per row, vector ≈ row * scale
    last_id: int
    deletions: str | None  # the kb_meta 'deletions' value when loaded

    @property
    def nbytes(self) -> int:
        scales = 0 if self.scales is None else self.scales.nbytes
        return self.ids.nbytes + self.vectors.nbytes + scales

    def scores(self, rows: np.ndarray | slice, vector: Sequence[float]) -> np.ndarray:
        """Cosine of ``vector`` with the copy's ``rows`` (approximate for int8 copies)."""
        query = np.asarray(vector, dtype=np.float32)
        if self.scales is None:
            return self.vectors[rows] @ query
        return (self.vectors[rows].astype(np.float32) @ query) * self.scales[rows]


def nearest(store, path: str, account_id: str, vector: Sequence[float], k: int) -> list[int] | None:
    """The ``k`` chunks closest to ``vector``; None when the account has no copy (one is
    then made for the next searches if the account is large enough)."""
    matrix = _copy(store, path, account_id, quantized=False)
    if matrix is None:
        return None
    if not len(matrix.ids):
        return []
    scores = matrix.scores(slice(None), vector)
    take = min(k, len(scores))
    best = np.argpartition(-scores, take - 1)[:take]
    return matrix.ids[best[np.argsort(-scores[best], kind="stable")]].tolist()


def quantized(store, path: str, account_id: str) -> _Matrix | None:
    """The account's int8 copy, up to date; None when there is none (one is then made for
    the next searches if it fits the budget)."""
    return _copy(store, path, account_id, quantized=True)


def _copy(store, path: str, account_id: str, quantized: bool) -> _Matrix | None:
    key = (path, account_id, quantized)
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
        dim = int(store.meta("embedding_dim"))
        row_bytes = dim + 4 + 8 if quantized else 4 * dim + 8  # the vector, scale and id
        if chunks >= IN_RAM_FROM and chunks * row_bytes <= BUDGET_BYTES:
            _start_loading(type(store), key)
        return None
    return _refresh(store, key, matrix)


def _refresh(store, key: tuple[str, str, bool], matrix: _Matrix) -> _Matrix:
    """``matrix`` with the account's chunks written since it was made."""
    newer = store.chunk_ids(key[1], matrix.last_id)
    if not newer:
        return matrix
    found = store.vectors(newer)
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    rows = np.frombuffer(b"".join(found.values()), dtype=np.float32)
    rows = rows.reshape(len(found), matrix.vectors.shape[1])
    scales = None
    if matrix.scales is not None:
        rows, scales = _quantize(rows)
        scales = np.concatenate([matrix.scales, scales])
    grown = _Matrix(
        np.concatenate([matrix.ids, ids]),
        np.concatenate([matrix.vectors, rows]),
        scales,
        max(newer),
        matrix.deletions,
    )
    with _lock:
        if _cache.get(key) is matrix:
            _cache[key] = grown
            _evict()
    return grown


def _start_loading(store_type, key: tuple[str, str, bool]) -> None:
    with _lock:
        if key in _loading:
            return
        _loading.add(key)
    threading.Thread(target=_load, args=(store_type, key), name="kb-matrix", daemon=True).start()


def _load(store_type, key: tuple[str, str, bool]) -> None:
    """Copy the account's vectors, through a ``store_type`` (the KnowledgeStore) on a read
    connection of its own, a batch at a time into arrays made once."""
    path, account_id, quantized = key
    try:
        db = open_reader(path)
        try:
            store = store_type(db)
            db.execute("begin")  # one read transaction: the count holds for the rows read
            deletions = store.meta("deletions")
            dim = int(store.meta("embedding_dim"))
            total = store.account_chunks(account_id)
            ids = np.empty(total, dtype=np.int64)
            vectors = np.empty((total, dim), dtype=np.int8 if quantized else np.float32)
            scales = np.empty(total, dtype=np.float32) if quantized else None
            done = 0
            for batch_ids, blob in store.account_vectors(account_id):
                rows = np.frombuffer(blob, dtype=np.float32).reshape(len(batch_ids), dim)
                end = done + len(batch_ids)
                ids[done:end] = batch_ids
                if quantized:
                    vectors[done:end], scales[done:end] = _quantize(rows)
                else:
                    vectors[done:end] = rows
                done = end
        finally:
            db.close()
        if not done:
            return
        matrix = _Matrix(ids[:done], vectors[:done], None if scales is None else scales[:done],
                         int(ids[:done].max()), deletions)  # fmt: skip
        if np.any(np.diff(matrix.ids) < 0):  # codes.py looks rows up by id
            order = np.argsort(matrix.ids)
            matrix.ids, matrix.vectors = matrix.ids[order], matrix.vectors[order]
            matrix.scales = None if scales is None else matrix.scales[order]
        with _lock:
            _cache[key] = matrix
            _evict()
    except Exception:  # the vec0 leg keeps answering; the next search tries again
        log.exception("copying the vectors of an account into RAM failed")
    finally:
        with _lock:
            _loading.discard(key)


def _quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their scales: each row divided by its largest magnitude / 127."""
    scales = np.abs(rows).max(axis=1) / 127
    scales[scales == 0] = 1
    return np.rint(rows / scales[:, None]).astype(np.int8), scales.astype(np.float32)


def _evict() -> None:
    """Drop the least recently searched copies over the budget (call with ``_lock``)."""
    while _cache and sum(m.nbytes for m in _cache.values()) > BUDGET_BYTES:
        _cache.popitem(last=False)
