"""The vector leg for large accounts: a binary first pass in RAM, an int8 re-ranking,
then exact rescoring.

sqlite-vec compares a query with every vector of the account (no ANN index), which takes
too long past a few hundred thousand chunks on a small CPU, and its ``bit`` vectors are no
faster there (docs/benchmarks.md). So each chunk row also keeps its vector's sign bits
(``chunks.code``, 48 bytes for 384 dimensions); for an account with more than
``QUANTIZED_ABOVE`` chunks the search loads them once into a NumPy array (kept per
process, refreshed from the rows added since) and ranks them by Hamming distance to the
query's bits. Sign bits alone cannot order near-duplicates, so the ``CANDIDATES`` closest
are re-ranked with the account's int8 copy (matrix.quantized, made in the background at the
first search) and the ``RERANKED`` best of those rescored with their exact vectors from
vec0. Until the copy is there, the ``RESCORE`` closest by Hamming distance are rescored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.knowledge import matrix

#: Accounts with at least this many chunks use these stages. They are lossy: on the
#: benchmark's near-duplicate-heavy vectors they keep 99.8% of exact KNN's top 10 at 100k
#: chunks and 96.9% at 1M (with the int8 copy; the first pass alone with 400 rescored 84%
#: and 48%, docs/benchmarks.md), so below this size exact KNN stays (matrix.py's float32
#: copy is as fast there).
QUANTIZED_ABOVE = 250_000
#: Candidates of the first pass rescored exactly while the account has no int8 copy.
RESCORE = 400
#: With the copy: candidates of the first pass re-ranked by it, and how many of its best
#: are rescored exactly (one vec0 lookup each).
CANDIDATES = 16_000
RERANKED = 50
#: Accounts whose codes one process keeps (least recently searched dropped first).
CACHED_ACCOUNTS = 16

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str], _Codes] = OrderedDict()


@dataclass
class _Codes:
    ids: np.ndarray  # int64, chunk ids
    bits: np.ndarray  # uint64, (words, chunks): one contiguous row per 64-bit word
    last_id: int
    deletions: str | None  # the kb_meta 'deletions' value when loaded


def code(vector: Sequence[float]) -> bytes:
    """The sign bits of ``vector``, packed (what ``chunks.code`` holds)."""
    return np.packbits(np.asarray(vector, dtype=np.float32) > 0).tobytes()


def nearest(
    store, path: str, account_id: str, vector: Sequence[float], k: int, *, int8: bool = True
) -> list[int]:
    """The ``k`` chunks closest to ``vector`` (cosine), through the binary first pass and,
    once the account has one (and with ``int8``), its int8 copy."""
    copy = matrix.quantized(store, path, account_id) if int8 else None
    codes = _codes(store, path, account_id)
    if copy is None:
        return rescored(store, first_pass(codes, vector, RESCORE), vector, k)
    candidates = first_pass(codes, vector, CANDIDATES)
    rows = np.minimum(np.searchsorted(copy.ids, candidates), len(copy.ids) - 1)
    copied = copy.ids[rows] == candidates  # rows written since: rescored in any case
    rows = rows[copied]
    scores = copy.scores(rows, vector)
    if len(scores) > RERANKED:
        rows = rows[np.argpartition(-scores, RERANKED - 1)[:RERANKED]]
    return rescored(store, np.concatenate([copy.ids[rows], candidates[~copied]]), vector, k)


def first_pass(codes: _Codes, vector: Sequence[float], n: int) -> np.ndarray:
    """The ids of ``n`` codes closest to ``vector``'s by Hamming distance, in no order
    (ties at the last distance taken in id order).

    Word by word over contiguous rows, and the cut found by counting distances: six times
    faster at 1M chunks than one pass over (chunks, words) and an argpartition.
    """
    words, chunks = codes.bits.shape
    if n >= chunks:
        return codes.ids
    query = np.frombuffer(code(vector), dtype=np.uint8)
    query = np.pad(query, (0, words * 8 - len(query))).view(np.uint64)
    distance = np.zeros(chunks, dtype=np.uint16)
    for word, bits in zip(query, codes.bits, strict=True):
        distance += np.bitwise_count(bits ^ word)
    cut = int(np.searchsorted(np.cumsum(np.bincount(distance)), n))  # n within distance <= cut
    below = np.flatnonzero(distance < cut)
    return codes.ids[np.concatenate([below, np.flatnonzero(distance == cut)[: n - len(below)]])]


def rescored(store, candidates: np.ndarray, vector: Sequence[float], k: int) -> list[int]:
    """The ``k`` of ``candidates`` closest to ``vector`` by their exact vectors."""
    found = store.vectors(candidates.tolist())
    ids = np.fromiter(found, dtype=np.int64, count=len(found))
    rows = np.frombuffer(b"".join(found.values()), dtype=np.float32).reshape(len(found), -1)
    scores = rows @ np.asarray(vector, dtype=np.float32)
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def size(store, path: str, account_id: str) -> int:
    """How many coded chunks the account has (loads or refreshes its codes)."""
    return len(_codes(store, path, account_id).ids)


def _codes(store, path: str, account_id: str) -> _Codes:
    key = (path, account_id)
    deletions = store.meta("deletions")
    with _lock:
        codes = _cache.get(key)
        if codes is None or codes.deletions != deletions:
            codes = _load(store, account_id, 0, deletions)
        else:
            newer = _load(store, account_id, codes.last_id, deletions)
            if len(newer.ids) and not len(codes.ids):
                codes = newer
            elif len(newer.ids):
                codes = _Codes(
                    np.concatenate([codes.ids, newer.ids]),
                    np.concatenate([codes.bits, newer.bits], axis=1),
                    newer.last_id,
                    deletions,
                )
        _cache[key] = codes
        _cache.move_to_end(key)
        while len(_cache) > CACHED_ACCOUNTS:
            _cache.popitem(last=False)
        return codes


def _load(store, account_id: str, after: int, deletions: str | None) -> _Codes:
    ids, blobs = store.codes(account_id, after)
    if not blobs:
        return _Codes(np.zeros(0, np.int64), np.zeros((1, 0), np.uint64), after, deletions)
    width = -(-len(blobs[0]) // 8) * 8  # whole 64-bit words
    raw = np.frombuffer(b"".join(b.ljust(width, b"\0") for b in blobs), dtype=np.uint8)
    bits = np.ascontiguousarray(raw.reshape(len(blobs), width).view(np.uint64).T)
    return _Codes(np.asarray(ids, dtype=np.int64), bits, max(ids), deletions)
