"""Benchmark the vector leg at scale: vec0's exact KNN against each stage of codes.py.

Usage::

    .venv/bin/python scripts/bench/vectors.py [--sizes 100000,1000000] [--queries 100]
        [--keep DIR] [--record]

Vectors as in scripts/bench/retrieval.py: ``--real`` passages of its labelled corpus
embedded for real with the bundled all-MiniLM-L6-v2 (in process), the rest calibrated
near-duplicate variants of them (the original's vector plus Gaussian noise, re-normalised,
the noise matched to real variants' cosine); the queries are the corpus's real query
embeddings. Every chunk goes in through ``KnowledgeStore.add_chunks`` (chunk row with its
code, FTS5 row, vec0 row), 1,000 a transaction, for one account; with ``--keep`` the
vectors and the filled databases stay in DIR and the next run reuses them. Measured per
size, once the in-RAM copies are made, query by query in turn: the exact vec0 KNN,
``store.nearest`` as routed, and codes.py's paths: the binary first pass, the int8
re-ranking of ``codes.CANDIDATES`` and exact rescoring of ``codes.RERANKED`` (or 10), and
the binary first pass with exact rescoring of ``codes.RESCORE`` alone (what accounts past
``codes.QUANTIZED_ABOVE`` used before the int8 stage). recall@10 is the share of the exact
top 10 a path returns.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import (
    bench_parser,
    date_and_machine,
    models_settings,
    report_tables,
)
from retrieval import SEED, build_corpus, embed_corpus

from appliance.accounts import service as accounts
from appliance.cli import initialise
from appliance.config import Settings
from appliance.db import open_db, write_transaction
from appliance.inference.engine import load_engine
from appliance.knowledge import codes, matrix
from appliance.knowledge.store import Chunk, Document, KnowledgeStore

SECTION = "## Vector leg at scale: binary, int8, exact (scripts/bench/vectors.py)"
PER_DOC = 1000


def exact(db, account_id: str, vector: list[float], k: int) -> list[int]:
    from sqlite_vec import serialize_float32

    rows = db.execute(
        "select rowid from chunk_vectors where embedding match ? and k = ? and account_id = ? "
        "order by distance",
        [serialize_float32(vector), k, account_id],
    )
    return [row[0] for row in rows]


def fill(db, account_id: str, vectors: np.ndarray, log) -> float:
    store = KnowledgeStore(db)
    store.ensure_vectors(vectors.shape[1], "bench")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    for d, start in enumerate(range(0, len(vectors), PER_DOC)):
        rows = vectors[start : start + PER_DOC]
        doc_id = f"doc_v{d:07d}"
        chunks = [Chunk(i, f"passage {start + i}", None, "", 4) for i in range(len(rows))]
        with write_transaction(db):
            store.insert_document(
                Document(doc_id, account_id, None, f"{doc_id}.txt", "txt", 1, doc_id, "ready",
                         None, len(rows), len(rows), "bench", now, now)
            )  # fmt: skip
            store.add_chunks(doc_id, account_id, chunks, rows.tolist())
        if d % 100 == 99:
            log(f"    {start + len(rows):,} chunks written")
    return time.perf_counter() - started


def measure(store, db, account_id: str, size: int, seconds: float, queries, log) -> list:
    """One row per path: vec0's exact KNN, store.nearest as routed, and codes.py's stages,
    called query by query in turn once the in-RAM copies are made."""
    path = db.execute("select file from pragma_database_list where name = 'main'").fetchone()[0]
    t = time.perf_counter()
    store.nearest(account_id, queries[0], 10)
    codes.nearest(store, path, account_id, queries[0], 10, int8=False)
    first = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    while matrix.quantized(store, path, account_id) is None:  # made in the background
        time.sleep(0.1)
    copy = matrix.quantized(store, path, account_id)
    made = time.perf_counter() - t
    in_ram = size < codes.QUANTIZED_ABOVE  # store.nearest uses a float32 copy: wait for it
    while in_ram and not matrix.nearest(store, path, account_id, queries[0], 1):
        time.sleep(0.1)
    log(
        f"  {size:,}: written at {size / seconds:,.0f} chunks/s; first search {first:.0f} ms; "
        f"int8 copy {copy.nbytes / 2**20:.0f} MiB, made in {made:.1f} s"
    )

    def rescoring(n: int):
        def run(vector):
            saved, codes.RERANKED = codes.RERANKED, n
            try:
                return codes.nearest(store, path, account_id, vector, 10)
            finally:
                codes.RERANKED = saved

        return run

    routed = (
        "store.nearest: in-RAM float32 copy, exact"
        if size < codes.QUANTIZED_ABOVE
        else "store.nearest: = the next row"
    )
    paths = {
        "exact vec0 KNN": lambda v: exact(db, account_id, v, 10),
        routed: lambda v: store.nearest(account_id, v, 10),
        f"binary → {codes.CANDIDATES:,} → int8 → {codes.RERANKED} exact": rescoring(codes.RERANKED),
        f"binary → {codes.CANDIDATES:,} → int8 → 10 exact": rescoring(10),
        f"binary → {codes.RESCORE} exact (before)": lambda v: codes.nearest(
            store, path, account_id, v, 10, int8=False
        ),
    }
    times = {name: [] for name in paths}
    recall = {name: [] for name in paths}
    for vector in queries:
        truth = None
        for name, run in paths.items():
            t = time.perf_counter()
            found = run(vector)
            times[name].append((time.perf_counter() - t) * 1000)
            truth = truth or set(found)
            recall[name].append(len(set(found) & truth) / 10)
    base = statistics.median(times["exact vec0 KNN"])
    rows = []
    for name in paths:
        p50 = statistics.median(times[name])
        rows.append([f"{size:,}", name, f"{p50:.1f}", f"{np.percentile(times[name], 95):.1f}",
                     f"{p50 / base:.3f}", f"{statistics.fmean(recall[name]):.3f}"])  # fmt: skip
        log("  " + " | ".join(rows[-1]))
    return rows


def load_vectors(args, size: int, work: Path, threads, keep: Path | None, log):
    """The passage vectors, the query vectors and the cosines of the derived vectors and of
    real variants to their originals: from ``keep`` when a run left them there."""
    saved = keep / f"vectors-{SEED}-{size}-{args.real}-{args.queries}.npz" if keep else None
    if saved and saved.exists():
        log(f"reusing {saved}")
        with np.load(saved) as data:
            return data["vectors"], data["queries"].tolist(), data["cosines"].tolist()
    engine = load_engine(models_settings(args.data_dir, work, threads)).embedding
    corpus = build_corpus(SEED, size, args.queries, args.real)
    log(f"embedding {args.real} passages and {args.queries} queries, deriving the rest")
    emb = embed_corpus(corpus, engine, SEED, log)
    queries = [emb.queries[q.text] for q in corpus.queries]
    cosines = [emb.derived_cosine, emb.variant_cosine]
    if saved:
        keep.mkdir(parents=True, exist_ok=True)
        np.savez(saved, vectors=emb.vectors, queries=np.asarray(queries), cosines=cosines)
    return emb.vectors, queries, cosines


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--real", type=int, default=2000, help="passages embedded for real")
    parser.add_argument("--data-dir", type=Path, help="data dir with the models installed")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: cores)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the vectors and the filled databases in this folder and reuse them on the "
        "next run with the same --sizes, --queries and --real (1M takes minutes to build)",
    )
    args = parser.parse_args()
    threads = {"inference.n_threads": args.threads} if args.threads else None
    sizes = sorted(int(s) for s in args.sizes.split(","))

    def log(message: str) -> None:
        print(message, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    keep = args.keep.absolute() if args.keep else None
    try:
        vectors, queries, cosines = load_vectors(args, sizes[-1], work, threads, keep, log)
        rows = []
        for size in sizes:
            built = keep / f"size-{size}-{args.real}" if keep else work / f"size-{size}"
            settings = Settings.load(data_dir=built, environ={})
            if not (built / "filled.json").exists():
                shutil.rmtree(built, ignore_errors=True)
                initialise(settings)
            db = open_db(settings)
            try:
                if (built / "filled.json").exists():
                    filled = json.loads((built / "filled.json").read_text())
                    log(f"size {size:,}: reusing {built}")
                else:
                    _, account = accounts.create_user(db, "a@bench.example", datetime.now(UTC))
                    log(f"size {size:,}: writing")
                    seconds = fill(db, account.id, vectors[:size], log)
                    filled = {"account": account.id, "seconds": seconds}
                    (built / "filled.json").write_text(json.dumps(filled))
                seconds = filled["seconds"]
                account_id = filled["account"]
                store = KnowledgeStore(db)
                rows += measure(store, db, account_id, size, seconds, queries, log)
            finally:
                db.close()
                if not keep:
                    shutil.rmtree(built, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ["Chunks (one account)", "Path", "p50 ms", "p95 ms", "p50 / exact vec0's",
              "recall@10 of exact"]  # fmt: skip
    setup = [
        *date_and_machine(),
        [
            "Vectors",
            f"{args.real:,} real all-MiniLM-L6-v2 passages, the rest calibrated variants "
            f"(cosine to their original {cosines[0]:.3f}, real variants "
            f"{cosines[1]:.3f}); {args.queries} real query embeddings",
        ],
        [
            "Settings",
            f"codes.QUANTIZED_ABOVE {codes.QUANTIZED_ABOVE:,}, codes.CANDIDATES "
            f"{codes.CANDIDATES:,}, codes.RERANKED {codes.RERANKED}, "
            f"codes.RESCORE {codes.RESCORE}, "
            f"matrix.BUDGET_BYTES {matrix.BUDGET_BYTES >> 20} MiB",
        ],
    ]
    report_tables(args.record, SECTION, setup, [("", header, rows)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
