"""Hybrid retrieval: FTS5 BM25 and vector KNN, fused by reciprocal rank fusion.

Both legs filter by account inside the query (the FTS join, and the vec0 partition key),
so an account always gets its own top-k. Either leg alone still answers; the result
says which legs ran, and whether the vector leg could not because the query could not be
embedded (the inference service is down or restarting).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import sqlite_utils
from sqlite_utils.utils import sqlite3

from appliance.errors import ApplianceError, InvalidInput
from appliance.inference.client import InferenceClient
from appliance.knowledge.store import KnowledgeStore

log = logging.getLogger(__name__)
RRF_K = 60
MAX_QUERY_CHARS = 2000
MAX_K = 50
WORD = re.compile(r"\w+", re.UNICODE)


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
    words = WORD.findall(text.lower())[:64]
    return " OR ".join(f'"{word}"' for word in words)


def search(
    db: sqlite_utils.Database,
    client: InferenceClient | None,
    account_id: str,
    query: str,
    k: int = 8,
) -> SearchResult:
    """The account's top-``k`` passages for ``query``."""
    query = (query or "").strip()
    if not query:
        raise InvalidInput("Type something to search for.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"The search text may be at most {MAX_QUERY_CHARS} characters.")
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}.")
    store = KnowledgeStore(db)
    depth = max(k * 4, 20)
    ranked: dict[str, list[int]] = {}
    vector_unavailable = False
    match = fts_query(query)
    if match:
        ranked["bm25"] = store.bm25(account_id, match, depth)
    if client is not None and store.has_vectors():
        try:
            vector = client.embed([query], account_id=account_id)[0]
            ranked["vector"] = store.nearest(account_id, vector, depth)
        except (ApplianceError, sqlite3.Error) as exc:
            # Inference down, or vectors of another dimension (the model changed and the
            # index was not rebuilt yet): the full-text leg still answers.
            log.warning("vector search skipped: %s", type(exc).__name__)
            vector_unavailable = isinstance(exc, ApplianceError)
    scores: dict[int, float] = {}
    seen_in: dict[int, list[str]] = {}
    for leg, ids in ranked.items():
        for rank, chunk_id in enumerate(ids):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            seen_in.setdefault(chunk_id, []).append(leg)
    best = sorted(scores, key=lambda cid: scores[cid], reverse=True)[:k]
    rows = store.chunk_rows(best, account_id)
    hits = [
        Hit(
            chunk_id=cid,
            document_id=rows[cid]["document_id"],
            filename=rows[cid]["filename"],
            text=rows[cid]["text"],
            page=rows[cid]["page"],
            heading=rows[cid]["heading"],
            score=round(scores[cid], 6),
            legs=tuple(seen_in[cid]),
        )
        for cid in best
        if cid in rows
    ]
    return SearchResult(hits=hits, legs=list(ranked), vector_unavailable=vector_unavailable)
