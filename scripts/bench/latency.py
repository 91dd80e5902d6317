"""Hybrid search latency at scale, before and after a change, in one process.

Usage::

    .venv/bin/python scripts/bench/latency.py --chunks 100000 --data-dir DIR

The CPUs of the box are shared, so absolute times swing with other people's work; this
script measures the hybrid search as it was and as it is now query by query, interleaved
(the order alternating), so both see the same load, and reports both with their ratio.

The DB (built once in DIR, reused when there): two accounts with ``--chunks`` chunks each,
the text of scripts/bench/retrieval.py's labelled corpus, written through the worker's
write path (``retrieval.ingest_tier``). Vectors are random unit vectors for the first
3,000 passages and near-duplicate variants of them (cosine 0.958, as measured between real
embeddings of a passage and its variant) for the rest: search time does not depend on what
the vectors mean. Query vectors are their target's vector plus noise.

"Before" is search.search with the vector leg in vec0 (``matrix.IN_RAM_FROM`` out of
reach) and the word counts read from the index at every query; "now" is search.search as
it is. Both return the same hits (checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import retrieval  # scripts/bench/retrieval.py

from appliance.accounts import service as accounts
from appliance.cli import initialise
from appliance.config import Settings
from appliance.db import open_db
from appliance.knowledge import matrix
from appliance.knowledge import search as kb_search
from appliance.knowledge import store as kb_store
from appliance.knowledge.store import KnowledgeStore

MODEL = "all-minilm-l6-v2"
REAL = 3000


def build(size: int, data_dir: Path) -> None:
    corpus = retrieval.build_corpus(retrieval.SEED, size, retrieval.QUERIES, REAL)
    rng = np.random.default_rng(1)
    base = rng.normal(size=(REAL, 384)).astype(np.float32)
    sources = np.array([corpus.variant_of[i] for i in range(REAL, size)], dtype=np.int64)
    noise = rng.normal(0, 0.015, (size - REAL, 384)).astype(np.float32)
    vectors = np.concatenate([base, base[sources] + noise])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = Settings.load(data_dir=data_dir, environ={})
    initialise(settings)
    db = open_db(settings)
    now = datetime.now(UTC)
    user_a, a = accounts.create_user(db, "a@bench.example", now, account_name="A")
    user_b, b = accounts.create_user(db, "b@bench.example", now, account_name="B")
    KnowledgeStore(db).ensure_vectors(384, MODEL)
    pairs = [(a.id, user_a.id), (b.id, user_b.id)]
    retrieval.ingest_tier(
        db, KnowledgeStore(db), corpus, vectors, size, pairs, MODEL, retrieval.SEED, print
    )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    queries = {
        q.text: (vectors[q.target] + rng.normal(0, 0.03, 384)).tolist() for q in corpus.queries
    }
    (data_dir / "queries.json").write_text(json.dumps({"account": a.id, "queries": queries}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000, help=f"at least {REAL}")
    parser.add_argument("--data-dir", type=Path, required=True, help="built there once")
    args = parser.parse_args()
    if args.chunks < REAL:
        parser.error(f"--chunks must be at least {REAL} (the passages with their own vectors)")
    if not (args.data_dir / "queries.json").exists():
        build(args.chunks, args.data_dir)
    meta = json.loads((args.data_dir / "queries.json").read_text())
    account, queries = meta["account"], meta["queries"]
    db = open_db(Settings.load(data_dir=args.data_dir, environ={}))
    store = KnowledgeStore(db)
    client = retrieval.CachedEmbeddings(queries)
    path = str(args.data_dir / "appliance.db")
    started = time.perf_counter()
    first = next(iter(queries.values()))
    # The copy is made in the background, and only for accounts of matrix.IN_RAM_FROM chunks
    # or more: a smaller account is searched in vec0 by both modes.
    if store.account_chunks(account) >= matrix.IN_RAM_FROM:
        while matrix.nearest(store, path, account, first, 10) is None:
            time.sleep(0.1)
        print(f"in-RAM copy of the vectors made in {time.perf_counter() - started:.1f} s")
    else:
        print(f"no in-RAM copy: fewer than {matrix.IN_RAM_FROM} chunks (both modes use vec0)")
    settings = {
        "before": (10**12, -1.0),  # (matrix.IN_RAM_FROM, store._RECOUNT_GROWTH)
        "now": (matrix.IN_RAM_FROM, kb_store._RECOUNT_GROWTH),
    }
    times: dict[str, dict[str, list[float]]] = {m: {"hybrid": [], "vector": []} for m in settings}
    same = 0
    for n, (text, vector) in enumerate(queries.items()):
        hits = {}
        for mode in list(settings)[:: 1 if n % 2 else -1]:
            matrix.IN_RAM_FROM, kb_store._RECOUNT_GROWTH = settings[mode]
            t = time.perf_counter()
            result = kb_search.search(db, client, account, text, 10)
            times[mode]["hybrid"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            store.nearest(account, vector, 40)
            times[mode]["vector"].append((time.perf_counter() - t) * 1000)
            hits[mode] = [hit.chunk_id for hit in result.hits]
        same += hits["before"] == hits["now"]
    warm = 20
    for step in ("hybrid", "vector"):
        b, a = (statistics.median(times[m][step][warm:]) for m in settings)
        p95 = [float(np.percentile(times[m][step][warm:], 95)) for m in settings]
        print(f"{step:7s} p50 before {b:6.1f} ms, now {a:6.1f} ms ({b / a:.1f}x); "
              f"p95 {p95[0]:.1f} -> {p95[1]:.1f} ms")  # fmt: skip
    print(f"same hits: {same} of {len(queries)} queries; {len(queries) - warm} timed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
