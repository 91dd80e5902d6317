"""Retrieval quality on a public IR test collection, through the product's code path.

Usage::

    .venv/bin/python scripts/bench/retrieval.py --collection cranfield [--record]

The collection is Cranfield (1,400 aeronautics abstracts, 225 queries, relevance graded
1-4 by Cleverdon). It is not in the repository (no licence file comes with it): put
``cran.all.1400``, ``cran.qry`` and ``cranqrel`` in ``scripts/bench/data/cranfield/``
(ignored by git), e.g. from any public copy of the collection::

    git clone --depth 1 https://github.com/noramtboraas/information-retrieval /tmp/ir
    mkdir -p scripts/bench/data/cranfield
    cp /tmp/ir/cran.all.1400 /tmp/ir/cran.qry /tmp/ir/cranqrel scripts/bench/data/cranfield/

What runs is what a user's upload and search run: every abstract is one ``.txt`` document
(title, blank line, abstract) stored by ``knowledge.add_document`` and ingested by the
worker's ingestion function (extraction, chunking, embedding through the real inference
service over HTTP, indexing), and each query is answered by ``search.search`` with the
real ``InferenceClient``. A second account holds a copy of every tenth document; every
hit is checked to be the first account's. Scores are per document: the ``k`` = 10 hits are mapped
to their documents, a document counted once at its best rank (so a query may get fewer
than 10 distinct documents, as a user would). nDCG@10 uses linear gains (grade 1 "complete
answer" = 4 … grade 4 "minimum interest" = 1, as trec_eval's ndcg_cut); recall@10 counts
the judged-relevant documents found in those 10.
"""

from __future__ import annotations

import io
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "scripts" / "bench" / "data"
K = 10


@dataclass
class Collection:
    name: str
    documents: dict[str, str]  # document id -> text of the uploaded file
    queries: list[tuple[str, str]]  # (query id, text), in order
    qrels: dict[str, dict[str, int]]  # query id -> document id -> gain (> 0)


def load_cranfield(directory: Path) -> Collection:
    """Parse the three Cranfield files (``.I`` records with ``.T`` ``.A`` ``.B`` ``.W``)."""
    names = ("cran.all.1400", "cran.qry", "cranqrel")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise SystemExit(
            f"{directory} lacks {', '.join(missing)}: see the top of scripts/bench/collection.py"
        )
    documents = {}
    for number, fields in _records((directory / "cran.all.1400").read_text(errors="replace")):
        title = " ".join(fields.get("T", "").split())
        body = " ".join(fields.get("W", "").split())
        if title and body.startswith(title):
            body = body[len(title) :].strip()  # .W repeats the title
        text = f"{title}\n\n{body}" if title else body
        if text.strip(" ."):  # two records are empty: nothing to upload
            documents[number] = text
    queries = []
    for index, (_, fields) in enumerate(_records((directory / "cran.qry").read_text()), 1):
        # cranqrel numbers the queries 1..225 in file order (the .I numbers have gaps).
        queries.append((str(index), " ".join(fields.get("W", "").split())))
    qrels: dict[str, dict[str, int]] = {}
    for line in (directory / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        query, doc, grade = parts[0], str(int(parts[1])), int(parts[2])
        if 1 <= grade <= 4 and doc in documents:  # -1: judged of no interest
            qrels.setdefault(query, {})[doc] = 5 - grade
    queries = [(q, text) for q, text in queries if q in qrels]
    return Collection("Cranfield", documents, queries, qrels)


def _records(text: str):
    for block in re.split(r"^\.I\s+", text, flags=re.MULTILINE)[1:]:
        number, _, rest = block.partition("\n")
        fields: dict[str, str] = {}
        current = None
        for line in rest.splitlines():
            if re.fullmatch(r"\.[TABW]\s*", line):
                current = line.strip()[1]
                fields[current] = ""
            elif current:
                fields[current] += line + "\n"
        yield str(int(number.strip())), fields


# -- metrics ------------------------------------------------------------------------------


def ndcg(ranked: list[str], gains: dict[str, int], k: int = K) -> float:
    dcg = sum(gains.get(doc, 0) / math.log2(r + 2) for r, doc in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    best = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / best if best else 0.0


def recall(ranked: list[str], gains: dict[str, int], k: int = K) -> float:
    relevant = {doc for doc, g in gains.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


@dataclass
class StageResult:
    name: str
    ndcg: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def add(self, ranked: list[str], gains: dict[str, int], took_ms: float) -> None:
        self.ndcg.append(ndcg(ranked, gains))
        self.recall.append(recall(ranked, gains))
        self.ms.append(took_ms)

    @property
    def mean_ndcg(self) -> float:
        return statistics.fmean(self.ndcg)

    @property
    def mean_recall(self) -> float:
        return statistics.fmean(self.recall)

    def p(self, q: float) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- ingestion ------------------------------------------------------------------------------


@dataclass
class Ingested:
    account_id: str
    doc_of_chunk: dict[int, str]  # chunk id (account A) -> collection document id
    a_chunks: set[int]
    seconds: float
    documents: int
    chunks: int
    failed: int


def ingest(
    db, settings, client, collection: Collection, accounts_ids, log: Callable[[str], None]
) -> Ingested:
    """Upload every document into the first account and every tenth into the second
    (their copies would tie with the first account's if the account filter failed), then
    run the worker's ingestion on them."""
    from appliance.knowledge import service as knowledge

    uploaded: list[str] = []
    now = datetime.now(UTC)
    for n, (account_id, user_id) in enumerate(accounts_ids):
        for number, text in list(collection.documents.items())[:: 10 if n else 1]:
            outcome = knowledge.add_document(
                db,
                settings,
                account_id,
                user_id,
                f"cran-{int(number):04d}.txt",
                io.BytesIO(text.encode()),
                now,
            )
            uploaded.append(outcome.document.id)
    log(f"  {len(uploaded)} documents uploaded; ingesting")
    started = time.perf_counter()
    _ingest_all(db, settings, client, uploaded, log)
    seconds = time.perf_counter() - started
    doc_of_chunk, a_chunks = chunk_documents(db, accounts_ids[0][0])
    chunks = db.execute("select count(*) from chunks").fetchone()[0]
    failed = db.execute("select count(*) from documents where status != 'ready'").fetchone()[0]
    return Ingested(
        accounts_ids[0][0], doc_of_chunk, a_chunks, seconds, len(uploaded), chunks, failed
    )


def chunk_documents(db, account_id: str) -> tuple[dict[int, str], set[int]]:
    """Account A's chunk ids and the collection document each belongs to (by file name)."""
    doc_of_chunk = {}
    for row in db.query(
        "select c.id, d.filename from chunks c join documents d on d.id = c.document_id "
        "where c.account_id = ?",
        [account_id],
    ):
        doc_of_chunk[row["id"]] = str(int(row["filename"][5:9]))
    return doc_of_chunk, set(doc_of_chunk)


def reused(db) -> Ingested:
    """What an earlier run ingested into this data dir (``--reuse``; no timing)."""
    account_id = db.execute("select id from accounts where name = 'A'").fetchone()[0]
    doc_of_chunk, a_chunks = chunk_documents(db, account_id)
    documents = db.execute("select count(*) from documents").fetchone()[0]
    chunks = db.execute("select count(*) from chunks").fetchone()[0]
    failed = db.execute("select count(*) from documents where status != 'ready'").fetchone()[0]
    return Ingested(account_id, doc_of_chunk, a_chunks, float("nan"), documents, chunks, failed)


def _ingest_all(db, settings, client, document_ids: list[str], log) -> None:
    from appliance.knowledge import service as knowledge
    from appliance.tasks import INGEST_BATCH

    last = time.perf_counter()
    for start in range(0, len(document_ids), INGEST_BATCH):
        # What one worker task does when it drains the queue.
        knowledge.ingest(db, settings, client, document_ids[start : start + INGEST_BATCH])
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            log(f"  {start + INGEST_BATCH}/{len(document_ids)} documents ready")


# -- evaluation -------------------------------------------------------------------------------


def run_stage(
    name: str,
    search: Callable[[str], list[int]],
    collection: Collection,
    ingested: Ingested,
) -> StageResult:
    """Every query through ``search`` (chunk ids, best first), scored per document."""
    result = StageResult(name)
    for _, text in collection.queries[:5]:  # warm-up
        search(text)
    for query_id, text in collection.queries:
        t = time.perf_counter()
        chunk_ids = search(text)
        took = (time.perf_counter() - t) * 1000
        outside = [c for c in chunk_ids if c not in ingested.a_chunks]
        if outside:
            raise AssertionError(f"{name}: chunks {outside[:5]} are not account A's")
        ranked = list(dict.fromkeys(ingested.doc_of_chunk[c] for c in chunk_ids))
        result.add(ranked, collection.qrels[query_id], took)
    return result


# -- the run --------------------------------------------------------------------------------


#: search.py as it was before this benchmark existed (every word OR-ed into BM25, depth
#: max(4k, 20) per leg, equal weights, RRF k = 60, no merging).
BEFORE = dict(
    bm25_depth=40,
    vector_depth=40,
    bm25_weight=1.0,
    vector_weight=1.0,
    rrf_k=60,
    common_share=0.0,
    merge_neighbours=False,
)


class RememberedEmbeddings:
    """The real client, each query embedded once (for trying many fusion settings)."""

    def __init__(self, client) -> None:
        self.client = client
        self.vectors: dict[str, list[float]] = {}

    def embed(self, texts, *, account_id=None, priority=None) -> list[list[float]]:
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            found = self.client.embed(missing, account_id=account_id, priority=priority)
            self.vectors.update(zip(missing, found, strict=True))
        return [self.vectors[t] for t in texts]


def stages(db, client, account_id: str, tuned: dict | None = None, reranker: str = ""):
    """The stages to compare: name -> search function (query text -> chunk ids)."""
    from appliance.knowledge import search as kb_search
    from appliance.knowledge.store import KnowledgeStore

    store = KnowledgeStore(db)
    default = kb_search.Tuning()

    def bm25(share: float):
        def run(text: str) -> list[int]:
            return store.bm25(account_id, kb_search.bm25_query(store, text, share), K)

        return run

    def vector(text: str) -> list[int]:
        return store.nearest(account_id, client.embed([text], account_id=account_id)[0], K)

    def hybrid(**fields):
        tuning = kb_search.Tuning(**fields)

        def run(text: str) -> list[int]:
            result = kb_search.search(db, client, account_id, text, K, tuning)
            return [hit.chunk_id for hit in result.hits]

        return run

    found = {
        "BM25, every query word OR-ed (before)": bm25(0.0),
        f"BM25, common words left out (> {default.common_share:.0%} of chunks)": bm25(
            default.common_share
        ),
        "Vectors": vector,
        "Hybrid as before (search.py until now)": hybrid(**BEFORE),
        "Hybrid, common words left out": hybrid(**{**BEFORE, "common_share": 0.05}),
    }
    if tuned:
        label = ", ".join(f"{key} {value}" for key, value in tuned.items())
        found[f"Hybrid, tuned ({label}), no merging"] = hybrid(
            **{**BEFORE, "common_share": default.common_share, **tuned}
        )
    found["Hybrid as now (search.Tuning defaults: tuned, neighbours merged)"] = hybrid()
    if reranker:
        candidates = 20
        found[f"Hybrid as now + rerank ({reranker}, top {candidates})"] = hybrid(
            rerank_candidates=candidates
        )
    return found


def tune(db, client, account_id: str, collection: Collection, ingested, log) -> dict:
    """Weights, RRF k and depths by coordinate search on the odd-numbered queries."""
    from appliance.knowledge import search as kb_search

    half = Collection(
        collection.name, collection.documents, collection.queries[::2], collection.qrels
    )
    remembered = RememberedEmbeddings(client)

    def score(fields: dict) -> float:
        tuning = kb_search.Tuning(**{**BEFORE, "common_share": 0.05, **fields})

        def run(text: str) -> list[int]:
            result = kb_search.search(db, remembered, account_id, text, K, tuning)
            return [hit.chunk_id for hit in result.hits]

        return run_stage("tune", run, half, ingested).mean_ndcg

    best: dict = {}
    grid = [{"bm25_weight": w, "rrf_k": r} for w in (0.5, 1.0, 1.5, 2.0, 3.0) for r in (10, 30, 60)]
    grid2 = [{"bm25_depth": b, "vector_depth": v} for b in (20, 40, 80) for v in (20, 40, 80)]
    for options in (grid, grid2):
        scored = [(score({**best, **fields}), fields) for fields in options]
        for value, fields in scored:
            log(f"    tune {fields}: nDCG@10 {value:.3f}")
        best.update(max(scored, key=lambda pair: pair[0])[1])
    log(f"  tuned on the odd-numbered queries: {best}")
    return best


def run(args, log: Callable[[str], None]) -> tuple[list, list, list]:
    """Ingest the collection, run every stage; returns (setup rows, tables, notes)."""
    import shutil

    from common import (  # scripts/bench/common.py
        cpu_model,
        install_models,
        share_models,
        start_inference,
    )

    from appliance import vault
    from appliance.accounts import service as accounts
    from appliance.cli import initialise
    from appliance.config import Settings
    from appliance.db import open_db
    from appliance.inference.client import InferenceClient

    collection = load_cranfield(args.collection_dir or DATA / "cranfield")
    judged = sum(len(g) for g in collection.qrels.values())
    log(
        f"{collection.name}: {len(collection.documents)} documents, "
        f"{len(collection.queries)} queries with {judged} judgements"
    )
    work = (args.work_dir or DATA / "work-cranfield").absolute()
    reuse = args.reuse and (work / "appliance.db").exists()
    if work.exists() and not reuse:
        shutil.rmtree(work)
    settings = Settings.load(data_dir=work, environ={})
    initialise(settings)
    if reuse:
        log(f"  reusing the documents ingested in {work}")
    elif args.data_dir:
        share_models(settings, args.data_dir)
    else:
        install_models(settings)
    env: dict[str, str] = {}
    if args.embedding_model:
        env["APPLIANCE_INFERENCE__EMBEDDING_MODEL"] = args.embedding_model
    if args.rerank_model:
        env["APPLIANCE_INFERENCE__RERANK_MODEL"] = args.rerank_model
    if args.inference_threads:
        env["APPLIANCE_INFERENCE__N_THREADS"] = str(args.inference_threads)
    service = start_inference(settings, **env)
    db = open_db(settings)
    try:
        client = InferenceClient(service.url, vault.read_secret(settings, "inference_key"))
        health = client.health()
        if reuse:
            ingested = reused(db)
        else:
            now = datetime.now(UTC)
            user_a, acct_a = accounts.create_user(db, "a@bench.example", now, account_name="A")
            user_b, acct_b = accounts.create_user(db, "b@bench.example", now, account_name="B")
            ingested = ingest(
                db,
                settings,
                client,
                collection,
                [(acct_a.id, user_a.id), (acct_b.id, user_b.id)],
                log,
            )
        account_a = ingested.account_id
        log(
            f"  {ingested.documents} documents, {ingested.chunks} chunks in "
            f"{ingested.seconds:.0f} s ({ingested.documents / ingested.seconds:.1f} documents/s)"
            f"; {ingested.failed} not ready"
        )
        tuned = tune(db, client, account_a, collection, ingested, log) if args.tune else None
        results = []
        reranker = health.get("rerank_model") or ""
        for name, search in stages(db, client, account_a, tuned, reranker).items():
            results.append(run_stage(name, search, collection, ingested))
            r = results[-1]
            log(f"  {name}: nDCG@10 {r.mean_ndcg:.3f}, recall@10 {r.mean_recall:.3f}")
    finally:
        db.close()
        service.stop()
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    setup = [
        ["Date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")],
        ["Machine", f"{cpu_model()}, {os.cpu_count()} CPUs; load average at the end {load}"],
        [
            "Collection",
            f"{collection.name}: {len(collection.documents)} abstracts (one .txt upload each; "
            f"a copy of every tenth in a second account), {len(collection.queries)} queries, "
            f"{judged} graded judgements",
        ],
        [
            "Models",
            f"embedding {health.get('embedding_model')}, through the inference service (HTTP)",
        ],
        [
            "Ingestion",
            f"{ingested.documents} documents, {ingested.chunks} chunks, upload → ready "
            f"{ingested.seconds:.0f} s ({ingested.documents / ingested.seconds:.1f} documents/s)",
        ],
    ]
    header = ["Stage", "nDCG@10", "recall@10", "nDCG@10, even queries", "p50 ms", "p95 ms"]
    rows = [
        [
            r.name,
            f"{r.mean_ndcg:.3f}",
            f"{r.mean_recall:.3f}",
            f"{statistics.fmean(r.ndcg[1::2]):.3f}",
            f"{r.p(50):.1f}",
            f"{r.p(95):.1f}",
        ]
        for r in results
    ]
    tables = [(f"Quality per stage (k = {K}, per document):", header, rows)]
    notes = [
        "Tuning (--tune) picks the fusion settings on the odd-numbered queries only; the "
        "'even queries' column is the held-out half.",
        "Each stage's time is the whole call as timed here, query embedding (HTTP) included "
        "where the stage embeds.",
    ]
    return setup, tables, notes
