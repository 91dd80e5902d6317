"""Deletion receipts: what an erasure removed (counts per table, file hashes, no content),
when, and by which request; hash-chained so a missing or edited receipt shows.

Each receipt's ``hash`` is SHA-256 over the previous receipt's hash and its own canonical
JSON body; ``seq`` comes from AUTOINCREMENT, whose counter (``sqlite_sequence``) remembers
the highest number ever used, so removing the newest receipt is detected too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

import sqlite_utils

from appliance.clock import iso

GENESIS = "0" * 64


@dataclass(frozen=True)
class Receipt:
    seq: int
    at: str
    account_id: str
    request: str
    body: dict
    prev_hash: str
    hash: str


def _digest(prev_hash: str, body_text: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + body_text).encode()).hexdigest()


def _canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def write(
    db: sqlite_utils.Database,
    account_id: str,
    request: str,
    counts: dict[str, int],
    files: list[dict[str, str]],
    now: datetime,
    *,
    billing_reference: str | None = None,
) -> Receipt:
    """Append a receipt (call inside the erasure's final transaction)."""
    last = db.execute("select hash from deletion_receipts order by seq desc limit 1").fetchone()
    prev = last[0] if last else GENESIS
    body = {
        "account_id": account_id,
        "at": iso(now),
        "request": request,
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "files": sorted(files, key=lambda f: (f.get("kind", ""), f.get("sha256", ""))),
        # The pseudonym billing records are kept under for the tax period (for an audit).
        "billing_reference": billing_reference,
    }
    text = _canonical(body)
    digest = _digest(prev, text)
    cursor = db.execute(
        "insert into deletion_receipts (at, account_id, request, body, prev_hash, hash) "
        "values (?, ?, ?, ?, ?, ?)",
        [body["at"], account_id, request, text, prev, digest],
    )
    return Receipt(cursor.lastrowid, body["at"], account_id, request, body, prev, digest)


def receipts(db: sqlite_utils.Database, account_id: str | None = None) -> list[Receipt]:
    sql = "select seq, at, account_id, request, body, prev_hash, hash from deletion_receipts"
    params: list = []
    if account_id:
        sql += " where account_id = ?"
        params.append(account_id)
    return [
        Receipt(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
        for row in db.execute(sql + " order by seq", params)
    ]


def verify(db: sqlite_utils.Database) -> list[str]:
    """Problems with the chain, as readable lines (empty: every receipt is intact)."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    for seq, at, account_id, request, body_text, prev_hash, digest in db.execute(
        "select seq, at, account_id, request, body, prev_hash, hash from deletion_receipts "
        "order by seq"
    ):
        if seq != expected_seq:
            problems.append(f"receipt(s) {expected_seq}..{seq - 1} missing")
        expected_seq = seq + 1
        if prev_hash != prev:
            problems.append(f"receipt {seq}: does not follow the receipt before it")
        try:
            body = json.loads(body_text)
        except ValueError:
            problems.append(f"receipt {seq}: body is not JSON")
            body = {}
        if _digest(prev_hash, body_text) != digest or _canonical(body) != body_text:
            problems.append(f"receipt {seq}: edited (hash does not match its content)")
        elif (body.get("account_id"), body.get("at"), body.get("request")) != (
            account_id,
            at,
            request,
        ):
            problems.append(f"receipt {seq}: edited (columns differ from the hashed body)")
        prev = digest
    row = db.execute("select seq from sqlite_sequence where name = 'deletion_receipts'")
    highest = row.fetchone()
    if highest and highest[0] >= expected_seq:
        problems.append(f"receipt(s) {expected_seq}..{highest[0]} missing (the newest)")
    return problems
