"""Benchmark ingestion, upload to ready, with the real worker and inference service.

Usage::

    .venv/bin/python scripts/bench/ingestion.py [--docs 1000] [--pages 300]
        [--code-root DIR] [--record]

Two workloads, each on a fresh data dir: ``--docs`` one-paragraph text documents (about
60 words each), and one PDF of ``--pages`` pages (three paragraphs a page, made with the
tests' minimal PDF writer, tests/knowledge/pdf_support.py). The real inference service
(``python -m appliance inference``) and the real worker (``python -m appliance worker``,
its Huey consumer with ``worker.workers`` threads) run as child processes; the documents
are stored as an upload stores them (``knowledge.add_document``) and queued as the upload
handler queues them (one ``ingest_document`` task each), as fast as this process can. The
clock runs from the first upload to the last document ``ready``.

``--code-root`` runs the worker from another checkout (e.g. a ``git worktree`` of the
commit before) on the same data, for a before/after on the same machine and hour. The
sandboxed extraction child runs ``python -I`` (no PYTHONPATH), so give ``--python`` an
interpreter whose site-packages find that checkout first, e.g. a venv made with
``python -m venv --without-pip`` whose ``.pth`` file lists the checkout, then this
checkout's ``.venv/lib/python3.11/site-packages``.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import (
    ROOT,
    bench_parser,
    date_and_machine,
    report_tables,
    share_models,
    start_inference,
)

from appliance.accounts import service as accounts
from appliance.cli import initialise
from appliance.config import Settings
from appliance.db import open_db
from appliance.inference import models
from appliance.knowledge import service as knowledge
from appliance.tasks import create_queue
from tests.knowledge.pdf_support import pdf_bytes

SECTION = "## Ingestion, upload to ready (scripts/bench/ingestion.py)"
WORDS = [
    "pump",
    "valve",
    "boiler",
    "invoice",
    "tenant",
    "delivery",
    "warehouse",
    "filter",
    "engineer",
    "schedule",
    "contract",
    "refund",
    "repair",
    "inspection",
    "meeting",
    "budget",
    "supplier",
    "order",
    "lift",
    "heating",
    "cooling",
    "ventilation",
    "report",
    "manager",
    "office",
    "printer",
    "network",
    "laptop",
    "account",
    "payment",
    "customer",
    "policy",
    "leave",
]


def paragraph(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(60)]
    return f"Note {n}: " + " ".join(words).capitalize() + "."


def page_stream(text: str) -> bytes:
    """A PDF page's content stream: ``text`` in Helvetica, one line per 90 characters."""
    lines = [text[i : i + 90] for i in range(0, len(text), 90)]
    body = "BT /F1 10 Tf 40 760 Td 12 TL " + " ".join(
        "(" + line.replace("\\", "").replace("(", "").replace(")", "") + ") '" for line in lines
    )
    return (body + " ET").encode("latin-1")


def run(files: list[tuple[str, bytes]], args, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-ingestion-"))
    settings = Settings.load(data_dir=work, environ={})
    initialise(settings)
    share_models(settings, args.data_dir)
    env: dict[str, str] = {}
    if args.inference_threads:
        env["APPLIANCE_INFERENCE__N_THREADS"] = str(args.inference_threads)
    service = start_inference(settings, **env)
    (settings.paths.data_dir / "appliance.toml").write_text(f'[inference]\nurl = "{service.url}"\n')
    settings = Settings.load(data_dir=work, environ={})
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    worker_env["APPLIANCE_DATA_DIR"] = str(work)
    if args.code_root:
        worker_env["PYTHONPATH"] = str(args.code_root.absolute())
    worker = subprocess.Popen(
        [str(args.python or sys.executable), "-m", "appliance", "worker"],
        env=worker_env,
        cwd=args.code_root or ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    db = open_db(settings)
    try:
        user, account = accounts.create_user(db, "a@bench.example", datetime.now(UTC))
        queue = create_queue(settings)
        time.sleep(2)  # the worker's consumer is up (its startup hook has run)
        started = time.perf_counter()
        for name, data in files:
            upload = knowledge.add_document(
                db, settings, account.id, user.id, name, io.BytesIO(data), datetime.now(UTC)
            )
            queue.ingest_document(upload.document.id)
        uploaded = time.perf_counter() - started
        deadline = time.monotonic() + args.limit
        while True:
            statuses = [d.status for d in knowledge.documents(db, account.id)]
            if all(s in ("ready", "failed") for s in statuses):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not done after {args.limit} s: {statuses.count('ready')} ready")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        chunks = db.execute("select count(*) from chunks").fetchone()[0]
        failed = statuses.count("failed")
        assert knowledge.audit(db, settings) == []
    finally:
        db.close()
        worker.send_signal(2)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        service.stop()
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"  {len(files)} documents, {chunks} chunks in {seconds:.1f} s "
        f"(uploads took {uploaded:.1f} s); {failed} failed"
    )
    return {"docs": len(files), "chunks": chunks, "seconds": seconds, "failed": failed}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=300, help="0: no PDF workload")
    parser.add_argument("--data-dir", type=Path, required=True, help="with the models installed")
    parser.add_argument("--code-root", type=Path, help="run the worker from this checkout")
    parser.add_argument("--python", type=Path, help="interpreter for the worker (see above)")
    parser.add_argument("--inference-threads", type=int, default=0)
    parser.add_argument("--limit", type=float, default=1800, help="seconds to wait at most")
    args = parser.parse_args()
    models.load_registry(Settings.load(data_dir=args.data_dir, environ={})).default("embedding")

    def log(message: str) -> None:
        print(message, flush=True)

    rng = random.Random(7)
    small = [(f"note-{n:04d}.txt", paragraph(rng, n).encode()) for n in range(args.docs)]
    pages = [" ".join(paragraph(rng, p * 3 + i) for i in range(3)) for p in range(args.pages)]
    code = str(args.code_root) if args.code_root else "this checkout"
    log(f"{args.docs} one-paragraph documents (worker from {code})")
    many = run(small, args, log)
    if args.pages:
        log(f"one PDF of {args.pages} pages")
        pdf = run([("manual.pdf", pdf_bytes(*map(page_stream, pages)))], args, log)
    header = ["Workload", "Documents", "Chunks", "Upload → ready s", "Documents/s", "Chunks/s"]
    rows = [
        [
            f"{args.docs} one-paragraph .txt",
            str(many["docs"]),
            str(many["chunks"]),
            f"{many['seconds']:.1f}",
            f"{many['docs'] / many['seconds']:.1f}",
            f"{many['chunks'] / many['seconds']:.0f}",
        ]
    ]
    if args.pages:
        rows.append(
            [
                f"one {args.pages}-page PDF",
                "1",
                str(pdf["chunks"]),
                f"{pdf['seconds']:.1f}",
                "",
                f"{pdf['chunks'] / pdf['seconds']:.0f}",
            ]
        )
    setup = [
        *date_and_machine(),
        ["Worker code", code + (f" (interpreter {args.python})" if args.python else "")],
        ["Inference", f"bundled models, n_threads {args.inference_threads or 'default'}"],
    ]
    report_tables(args.record, SECTION, setup, [("", header, rows)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
