"""Deletion receipts: what an erasure removed (counts per table, file hashes, no content),
when, and by which request; hash-chained so a missing or edited receipt shows.

A domain of its own, below the ones that delete (knowledge and chat write a receipt in
the transaction that deletes a document or a conversation; privacy writes one when it
erases an account).

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

from appliance import personal
from appliance.clock import iso

GENESIS = "0" * 64
TABLE = "deletion_receipts"


# This module's migrations: each function mNNN_…, applied once in number order (appliance.db).
def m001_create_deletion_receipts(db: sqlite_utils.Database) -> None:
    """Moved here from privacy's first migration (which created it until receipts became a
    domain of their own): databases made before already have the table."""
    db.execute(
        """create table if not exists deletion_receipts (
            seq integer primary key autoincrement,
            at text not null,
            account_id text not null,
            request text not null,
            body text not null,
            prev_hash text not null,
            hash text not null unique
        )"""
    )


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
    """Append a receipt (call inside the transaction of the deletion it records)."""
    last = next(db[TABLE].rows_where(select="hash", order_by="seq desc", limit=1), None)
    prev = last["hash"] if last else GENESIS
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
    row = {"at": body["at"], "account_id": account_id, "request": request, "body": text}
    seq = db[TABLE].insert({**row, "prev_hash": prev, "hash": digest}).last_rowid
    return Receipt(seq, body["at"], account_id, request, body, prev, digest)


def receipts(db: sqlite_utils.Database, account_id: str | None = None) -> list[Receipt]:
    where = "account_id = ?" if account_id else None
    found = db[TABLE].rows_where(where, [account_id] if account_id else None, order_by="seq")
    return [Receipt(**{**row, "body": json.loads(row["body"])}) for row in found]


def verify(db: sqlite_utils.Database) -> list[str]:
    """Problems with the chain, as readable lines (empty: every receipt is intact)."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    for row in db[TABLE].rows_where(order_by="seq"):
        seq, body_text, prev_hash = row["seq"], row["body"], row["prev_hash"]
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
        if _digest(prev_hash, body_text) != row["hash"] or _canonical(body) != body_text:
            problems.append(f"receipt {seq}: edited (hash does not match its content)")
        elif any(body.get(k) != row[k] for k in ("account_id", "at", "request")):
            problems.append(f"receipt {seq}: edited (columns differ from the hashed body)")
        prev = row["hash"]
    highest = next(db["sqlite_sequence"].rows_where("name = ?", [TABLE], select="seq"), None)
    if highest and highest["seq"] >= expected_seq:
        problems.append(f"receipt(s) {expected_seq}..{highest['seq']} missing (the newest)")
    return problems


# -- personal data (appliance.personal) -------------------------------------------------

TABLES = (
    personal.Table(TABLE, "account_id = :account", None, personal.KEEP, True, note="no content"),
)
PURGES: dict[str, personal.Purge] = {}


# Receipts are exported; none is erased (KEEP: the record of the erasure itself).
export, erase = personal.plain(TABLES)
