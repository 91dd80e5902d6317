"""Hybrid retrieval: FTS5 BM25 and vector KNN, fused, neighbours merged, then reranked.

Both legs filter by account inside the query (the FTS join, and the vec0 partition key),
so an account always gets its own top-k. Either leg alone still answers; the result
says which legs ran, and whether the vector leg could not because the query could not be
embedded (the inference service is down or restarting).

A search starts the query embedding and the vector leg on a pool thread, on a connection
from ``db.pooled``, runs the BM25 leg on the caller's connection meanwhile (SQLite
releases the GIL while it works), then fuses the two rankings by weighted reciprocal rank
fusion. The BM25 leg leaves out the query's common words (those in more than
``Tuning.common_share`` of all chunks): scoring their long posting lists is most of
its time and adds little to the ranking; a rare word is never left out.
Hits that are neighbouring chunks of one document become one passage. When the inference
service serves a reranker (``knowledge.rerank``), a cross-encoder re-scores the top
``knowledge.rerank_candidates`` passages and its order stands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import sqlite_utils
from sqlite_utils.utils import sqlite3

from appliance.config import KnowledgeSettings
from appliance.db import pooled
from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient, InferenceError
from appliance.knowledge.store import KnowledgeStore

log = logging.getLogger(__name__)
RRF_K = 60
MAX_QUERY_CHARS = 2000
MAX_K = 50
MAX_QUERY_WORDS = 64
WORD = re.compile(r"\w+", re.UNICODE)
#: Below this many chunks a common word's posting list costs nothing worth saving.
MIN_COMMON_ROWS = 500
#: Shorter common text at a chunk boundary is a coincidence, not the chunks' overlap.
MIN_OVERLAP_CHARS = 8
#: Words kept when every word of a query is common (the rarest ones).
KEEP_WHEN_ALL_COMMON = 3

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kb-search")


@dataclass(frozen=True)
class Tuning:
    """How the legs run and are fused. On the Cranfield collection no other depth, leg
    weight or RRF k did better than these (scripts/bench/retrieval.py --collection
    --tune, docs/benchmarks.md)."""

    legs: tuple[str, ...] = ("bm25", "vector")
    bm25_depth: int = 40
    vector_depth: int = 40
    bm25_weight: float = 1.0
    vector_weight: float = 1.0
    rrf_k: int = RRF_K
    common_share: float = 0.05  # 0: every query word goes to BM25
    merge_neighbours: bool = True
    rerank_candidates: int = 0  # 0: the fused order stands

    @classmethod
    def from_settings(cls, knowledge: KnowledgeSettings) -> Tuning:
        return cls(rerank_candidates=knowledge.rerank_candidates if knowledge.rerank else 0)


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: str
    filename: str
    text: str
    page: int | None
    heading: str
    score: float
    legs: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    legs: list[str]
    vector_unavailable: bool = False  # the model could not embed the query: full-text only


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query: each word quoted (no operators), OR-ed."""
    words = WORD.findall(text.lower())[:MAX_QUERY_WORDS]
    return " OR ".join(f'"{word}"' for word in words)


def bm25_query(store: KnowledgeStore, text: str, common_share: float) -> str:
    """``fts_query`` without the words found in over ``common_share`` of all chunks.

    A word is left out only when its stem's document frequency is above both the share
    and ``MIN_COMMON_ROWS``; when that would leave nothing, the rarest words stay.
    """
    words = list(dict.fromkeys(WORD.findall(text.lower())[:MAX_QUERY_WORDS]))
    if not words or common_share <= 0:
        return fts_query(text)
    rows = store.indexed_rows()
    limit = max(common_share * rows, MIN_COMMON_ROWS)
    if rows <= limit:
        return fts_query(text)
    frequency = store.document_frequencies(words)
    keep = [word for word in words if frequency[word] <= limit]
    if not keep:
        keep = sorted(words, key=frequency.__getitem__)[:KEEP_WHEN_ALL_COMMON]
    return " OR ".join(f'"{word}"' for word in keep)


def search(
    db: sqlite_utils.Database,
    client: InferenceClient | None,
    account_id: str,
    query: str,
    k: int = 8,
    tuning: Tuning | None = None,
    collections: list[str] | None = None,
) -> SearchResult:
    """The account's top-``k`` passages for ``query``; with ``collections``, only from
    documents in those collections (an empty list finds nothing)."""
    query = (query or "").strip()
    if not query:
        raise InvalidInput("Type something to search for.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"The search text may be at most {MAX_QUERY_CHARS} characters.")
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}.")
    tuning = tuning or Tuning()
    store = KnowledgeStore(db)
    ranked: dict[str, list[int]] = {}
    vector_unavailable = False
    vector_leg: Future | None = None
    if "vector" in tuning.legs and client is not None and store.has_vectors():
        vector_leg = _start_vector_leg(
            db, client, account_id, query, tuning.vector_depth, collections
        )
    if "bm25" in tuning.legs:
        match = bm25_query(store, query, tuning.common_share)
        if match:
            ranked["bm25"] = store.bm25(account_id, match, tuning.bm25_depth, collections)
    if vector_leg is not None:
        try:
            ranked["vector"] = vector_leg.result()
        except (ApplianceError, sqlite3.Error) as exc:
            # Inference down, or vectors of another dimension (the model changed and the
            # index was not rebuilt yet): the full-text leg still answers.
            log.warning("vector search skipped: %s", type(exc).__name__)
            vector_unavailable = isinstance(exc, ApplianceError)
    weights = {"bm25": tuning.bm25_weight, "vector": tuning.vector_weight}
    scores: dict[int, float] = {}
    seen_in: dict[int, list[str]] = {}
    for leg, ids in ranked.items():
        for rank, chunk_id in enumerate(ids):
            score = weights[leg] / (tuning.rrf_k + rank + 1)
            scores[chunk_id] = scores.get(chunk_id, 0.0) + score
            seen_in.setdefault(chunk_id, []).append(leg)
    order = sorted(scores, key=lambda cid: scores[cid], reverse=True)
    wanted = max(k, tuning.rerank_candidates)
    # Merging shortens the list: read a few more rows than hits are wanted.
    rows = store.chunk_rows(order[: wanted * 2 if tuning.merge_neighbours else wanted], account_id)
    hits = _passages(order, rows, scores, seen_in, tuning.merge_neighbours, wanted)
    if tuning.rerank_candidates and client is not None and len(hits) > 1:
        hits = _rerank(client, account_id, query, hits)
    return SearchResult(hits=hits[:k], legs=list(ranked), vector_unavailable=vector_unavailable)


def _start_vector_leg(
    db: sqlite_utils.Database,
    client: InferenceClient,
    account_id: str,
    query: str,
    depth: int,
    collections: list[str] | None = None,
) -> Future:
    path = KnowledgeStore(db).path()

    def run() -> list[int]:
        vector = client.embed([query], account_id=account_id)[0]
        with pooled(path) if path else contextlib.nullcontext(db) as reader:
            return KnowledgeStore(reader).nearest(account_id, vector, depth, collections)

    if not path:  # an in-memory database has no second connection: run it here
        future: Future = Future()
        try:
            future.set_result(run())
        except Exception as exc:  # handed to the caller by result()
            future.set_exception(exc)
        return future
    return _pool.submit(run)


@dataclass
class _Group:
    """Neighbouring chunks of one document and section, from its best-scored one."""

    best: dict
    rows: list[dict]
    score: float
    legs: list[str]
    first: int
    last: int

    def takes(self, row: dict) -> bool:
        best = self.best
        same = row["document_id"] == best["document_id"] and row["heading"] == best["heading"]
        return same and self.first - 1 <= row["position"] <= self.last + 1


def _passages(
    order: list[int],
    rows: dict[int, dict],
    scores: dict[int, float],
    seen_in: dict[int, list[str]],
    merge: bool,
    limit: int,
) -> list[Hit]:
    """Hits in fused order; with ``merge``, chunks next to a better hit of the same
    document and section join it (its text extended, its score theirs summed)."""
    groups: list[_Group] = []
    for cid in order:
        row = rows.get(cid)
        if row is None:
            continue
        group = next((g for g in groups if g.takes(row)), None) if merge else None
        if group is None:
            if len(groups) < limit:
                at = row["position"]
                groups.append(_Group(row, [row], scores[cid], list(seen_in[cid]), at, at))
            continue
        group.rows.append(row)
        group.first = min(group.first, row["position"])
        group.last = max(group.last, row["position"])
        group.score += scores[cid]
        group.legs += [leg for leg in seen_in[cid] if leg not in group.legs]
    hits = []
    for group in groups:
        parts = sorted(group.rows, key=lambda r: r["position"])
        best = group.best
        hits.append(
            Hit(
                chunk_id=best["id"],
                document_id=best["document_id"],
                filename=best["filename"],
                text=functools.reduce(_join_overlapping, [part["text"] for part in parts]),
                page=parts[0]["page"],
                heading=parts[0]["heading"],
                score=round(group.score, 6),
                legs=tuple(group.legs),
            )
        )
    return sorted(hits, key=lambda hit: hit.score, reverse=True)


def _join_overlapping(first: str, second: str) -> str:
    """``first`` + ``second`` without the text ``second`` repeats from ``first``'s end
    (chunks overlap by ``knowledge.chunk_overlap_tokens``)."""
    start = first.find(second[:1], max(0, len(first) - len(second)))
    while 0 <= start <= len(first) - MIN_OVERLAP_CHARS:
        if second.startswith(first[start:]):
            return first[:start] + second
        start = first.find(second[:1], start + 1)
    return f"{first} {second}"


def _rerank(client: InferenceClient, account_id: str, query: str, hits: list[Hit]) -> list[Hit]:
    """``hits`` in the reranker's order; the fused order when it cannot answer."""
    try:
        scores = client.rerank(query, [hit.text for hit in hits], account_id=account_id)
    except ApplianceError as exc:
        if not (isinstance(exc, InferenceError) and exc.status == 501):  # 501: none loaded
            log.warning("rerank skipped: %s", type(exc).__name__)
        return hits
    rescored = [replace(hit, score=round(s, 6)) for hit, s in zip(hits, scores, strict=True)]
    return sorted(rescored, key=lambda hit: hit.score, reverse=True)
