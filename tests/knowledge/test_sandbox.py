"""The persistent extraction worker: reused, replaced when it dies, and a document it died
under tried again. Real child processes, killed for real with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading

import psutil
from conftest import wait_until

from appliance.knowledge import sandbox
from appliance.knowledge.extract import extract


def write_html(path, paragraphs: int, word: str = "canary"):
    body = "".join(f"<p>Paragraph {n} about the {word} valve.</p>" for n in range(paragraphs))
    path.write_text(f"<html><body><h1>Notes</h1>{body}</body></html>")
    return path


def workers() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children()
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and sandbox.__name__ in " ".join(child.cmdline())
    ]


def mine() -> int | None:
    """The pid of this thread's worker (extract's default memory limit)."""
    return sandbox.Sandbox.for_thread(512).pid


def test_one_worker_reads_document_after_document(tmp_path):
    pids = set()
    for n in range(3):
        extracted = extract(write_html(tmp_path / f"{n}.html", 3, f"word{n}"), "html")
        assert f"word{n}" in extracted.sections[1].text
        pids.add(mine())
    assert len(pids) == 1 and pids <= {w.pid for w in workers()}


def test_a_killed_worker_is_replaced(tmp_path):
    extract(write_html(tmp_path / "a.html", 2), "html")
    old = psutil.Process(mine())
    os.kill(old.pid, signal.SIGKILL)
    old.wait(5)
    extracted = extract(write_html(tmp_path / "b.html", 2, "second"), "html")
    assert "second" in extracted.sections[1].text
    assert mine() not in (None, old.pid)


def test_the_document_a_worker_died_under_is_read_again(tmp_path):
    big = write_html(tmp_path / "big.html", 150_000, "retried")  # seconds of parsing
    before = {w.pid for w in workers()}
    result = {}

    def run():  # its own thread, so its own worker
        result["extracted"] = extract(big, "html", timeout=300)

    thread = threading.Thread(target=run)
    thread.start()
    (worker,) = wait_until(lambda: [w for w in workers() if w.pid not in before], what="worker")
    # Kill it while it is busy with the big file (its CPU time grows), not before.
    wait_until(lambda: sum(worker.cpu_times()[:2]) > 0.5, timeout=60, what="parsing")
    os.kill(worker.pid, signal.SIGKILL)
    thread.join(300)
    sections = result["extracted"].sections
    assert len(sections) == 150_001 and "retried" in sections[-1].text
    del thread, run  # the thread's worker ends with it
    wait_until(lambda: not [w for w in workers() if w.pid not in before], what="cleanup")


def test_the_worker_is_replaced_after_max_jobs(tmp_path):
    path = write_html(tmp_path / "small.html", 1)
    extract(path, "html")
    first, jobs = mine(), sandbox.Sandbox.for_thread(512).jobs
    for _ in range(sandbox.MAX_JOBS - jobs):
        extract(path, "html")
    assert mine() == first
    extract(path, "html")
    assert mine() not in (None, first)
    assert sandbox.Sandbox.for_thread(512).jobs == 1
