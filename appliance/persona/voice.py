"""Voice-training samples: upload checks, excerpts and the voice block.

A sample's text is read as the knowledge base reads a document (``knowledge.read_document``:
the content must match the name, a .docx is read in the sandboxed extraction worker).

Samples never leave the box: only short excerpts chosen here go into the account's own
system prompt (``voice_block``), which is used by the local model. Originals are stored
under ``DATA_DIR/files/<account_id>/voice/<sample id>``; the uploaded name is metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import unicodedata
from datetime import datetime
from itertools import groupby
from pathlib import Path, PurePosixPath

import sqlite_utils

from appliance.accounts import service as accounts
from appliance.accounts.models import MANAGERS
from appliance.clock import iso
from appliance.config import Settings
from appliance.db import write_transaction
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.ids import new_id
from appliance.knowledge import service as knowledge
from appliance.persona.models import VoiceExcerpt, VoiceSample
from appliance.persona.store import PersonaStore
from appliance.tokens import estimate_tokens

SUFFIXES = (".txt", ".md", ".markdown", ".docx")
EXCERPTS_PER_SAMPLE = 3
EXCERPT_MIN, EXCERPT_MAX, EXCERPT_IDEAL = 60, 300, 160
FILENAME_MAX = 200
HEADER = "Examples of the team's writing style:"
FOOTER = "Match this voice (word choice, sentence length, tone); do not reuse the content."

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_OPEN = "\"'\u201c\u2018("  # quotes and brackets that may open a sentence
_CLOSE = "\"'\u201d\u2019)\\]"  # ... or close it after the full stop
_START = rf"[{_OPEN}]?[A-Z0-9À-ÖØ-Þ]"
# A sentence ends at . ! ? … (maybe closed by a quote) followed by space and a capital.
_SENTENCE_BREAK = re.compile(rf"(?:(?<=[.!?…])|(?<=[.!?…][{_CLOSE}]))\s+(?={_START})")
_COMPLETE = re.compile(rf"^{_START}.*[.!?…][{_CLOSE}]*$", re.DOTALL)
_BOILERPLATE = re.compile(
    r"(?i)https?://|www\.|\S@\S|©|\bunsubscribe\b|\ball rights reserved\b|\bcopyright\b"
    r"|\bprivacy policy\b|\bterms (?:and|&) conditions\b|\bsent from my\b"
    r"|\bconfidentiality notice\b|\bthis (?:e-?mail|message) (?:and any attachments )?"
    r"(?:is|may be) (?:confidential|intended)"
)


class TooLarge(InvalidInput):
    """The sample is larger than ``persona.max_sample_bytes`` (HTTP 413)."""


def _require_manager(actor_role: str) -> None:
    if actor_role not in MANAGERS:
        raise accounts.Forbidden("Only owners and admins can manage voice samples.")


def sample_path(settings: Settings, account_id: str, sample_id: str) -> Path:
    return settings.paths.files / account_id / "voice" / sample_id


# -- checking and extracting ------------------------------------------------------------


def clean_filename(filename: str) -> str:
    """The uploaded name as metadata: last path part, no control characters, bounded."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[-FILENAME_MAX:] or "sample"


def read_sample(settings: Settings, path: Path, filename: str) -> tuple[str, str]:
    """The sample's kind (``txt``, ``md``, ``docx``) and text, read as the module says;
    headings come back as Markdown headings, which excerpts skip.

    Raises:
        InvalidInput: another type; ExtractionError: not what its name says, unreadable.
    """
    if PurePosixPath(filename.lower()).suffix not in SUFFIXES:
        raise InvalidInput("Voice samples must be .txt, .md or .docx files.")
    extracted = knowledge.read_document(settings, path, filename)
    text = "\n\n".join(
        f"{'#' * s.level} {s.text}" if s.kind == "heading" else s.text for s in extracted.sections
    )
    return extracted.kind, text


# -- excerpts ---------------------------------------------------------------------------


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; hard-wrapped lines joined; list items kept apart."""
    result: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        for apart, group in groupby(lines, _kept_apart):
            run = list(group)
            result += run if apart else [" ".join(run)]
    return [re.sub(r"\s+", " ", p).strip() for p in result]


def _kept_apart(line: str) -> bool:
    return bool(_BULLET.match(line)) or line.startswith(("#", "|", ">"))


def _usable(unit: str) -> bool:
    """A complete sentence (or a few) of medium length that is not boilerplate."""
    if not EXCERPT_MIN <= len(unit) <= EXCERPT_MAX or not _COMPLETE.match(unit):
        return False
    visible = [c for c in unit if not c.isspace()]
    letters = sum(1 for c in visible if c.isalpha())
    return letters >= 0.7 * len(visible) and not _BOILERPLATE.search(unit)


def _candidates(text: str) -> list[str]:
    units = []
    for paragraph in _paragraphs(text):
        if paragraph.startswith(("#", "|")):
            continue  # markdown headings and tables
        paragraph = _BULLET.sub("", paragraph.lstrip("> ")).strip()
        if len(paragraph) <= EXCERPT_MAX:
            units.append(paragraph)
            continue
        group = ""
        for sentence in _SENTENCE_BREAK.split(paragraph):
            # Close a group once it is of medium length, or when it would grow too long.
            if group and (
                len(group) >= EXCERPT_IDEAL or len(group) + 1 + len(sentence) > EXCERPT_MAX
            ):
                units.append(group)
                group = ""
            group = f"{group} {sentence}".strip()
        if group:
            units.append(group)
    first: dict[str, str] = {}  # the first of the units alike but for case
    for unit in units:
        if _usable(unit):
            first.setdefault(unit.casefold(), unit)
    return list(first.values())


def select_excerpts(text: str, limit: int = EXCERPTS_PER_SAMPLE) -> list[str]:
    """Up to ``limit`` excerpts, spread across the document, in document order.

    Deterministic: the candidates are split into ``limit`` equal stretches and each
    stretch gives its candidate closest to a medium length.
    """
    candidates = _candidates(text)
    n = len(candidates)
    if n <= limit:
        return candidates
    stretches = [candidates[i * n // limit : (i + 1) * n // limit] for i in range(limit)]
    return [min(s, key=lambda c: abs(len(c) - EXCERPT_IDEAL)) for s in stretches]


# -- samples ----------------------------------------------------------------------------


def add_sample(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    filename: str,
    content: bytes,
    now: datetime,
) -> VoiceSample:
    """Check, store and excerpt one sample (owners and admins).

    Raises:
        TooLarge: more than ``persona.max_sample_bytes``.
        InvalidInput: wrong type, content that does not match it, unsafe archive, no text.
        Conflict: the account has ``persona.max_samples`` samples, or this very file.
    """
    _require_manager(actor_role)
    limit = settings.persona.max_sample_bytes
    if not content:
        raise InvalidInput("The file is empty: choose a .txt, .md or .docx file with text.")
    if len(content) > limit:
        raise TooLarge(f"Voice samples can be at most {limit:,} bytes.")
    name = clean_filename(filename)
    sample_id = new_id("vsm")
    sha256 = hashlib.sha256(content).hexdigest()
    store = PersonaStore(db)
    _check_room(store, settings, account_id, sha256)  # before the extractor's work
    path = sample_path(settings, account_id, sample_id)
    partial = path.with_name(f".{path.name}.part")  # hidden: backups skip it
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "wb") as handle:  # the extractor reads a file
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        kind, text = read_sample(settings, partial, name)
        sample = VoiceSample(
            id=sample_id,
            account_id=account_id,
            filename=name,
            kind=kind,
            size=len(content),
            sha256=sha256,
            created_at=iso(now),
        )
        excerpts = [
            VoiceExcerpt(new_id("vex"), sample_id, account_id, excerpt, position)
            for position, excerpt in enumerate(select_excerpts(text))
        ]
        with write_transaction(db):
            _check_room(store, settings, account_id, sha256)  # again: uploads can race
            os.replace(partial, path)
            try:
                store.insert_sample(sample, excerpts)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
    finally:
        partial.unlink(missing_ok=True)
    return sample


def _check_room(store: PersonaStore, settings: Settings, account_id: str, sha256: str) -> None:
    if store.count_samples(account_id) >= settings.persona.max_samples:
        raise Conflict(
            f"An account can keep at most {settings.persona.max_samples} voice "
            "samples: delete one first."
        )
    if store.sample_by_hash(account_id, sha256):
        raise Conflict("This file has already been uploaded.")


def samples(db: sqlite_utils.Database, account_id: str, actor_role: str) -> list[VoiceSample]:
    """The account's samples, oldest first (owners and admins)."""
    _require_manager(actor_role)
    return PersonaStore(db).samples(account_id)


def excerpts(db: sqlite_utils.Database, account_id: str) -> list[VoiceExcerpt]:
    """Every excerpt of the account, sample by sample."""
    return PersonaStore(db).excerpts(account_id)


def delete_sample(
    db: sqlite_utils.Database,
    settings: Settings,
    account_id: str,
    actor_role: str,
    sample_id: str,
) -> None:
    """Delete the row and its excerpts (one transaction), then the file.

    Raises:
        NotFound: no such sample in this account.
    """
    _require_manager(actor_role)
    store = PersonaStore(db)
    with write_transaction(db):
        if store.sample(account_id, sample_id) is None:
            raise NotFound("No such voice sample.")
        store.delete_sample(account_id, sample_id)
    # After the commit: a crash in between leaves an orphan file, never a row without one.
    with contextlib.suppress(FileNotFoundError):
        sample_path(settings, account_id, sample_id).unlink()


def voice_block(db: sqlite_utils.Database, settings: Settings, account_id: str) -> str:
    """The excerpts as a block for the system prompt, within ``persona.voice_token_budget``.

    Samples take turns (first excerpt of each, then the second of each, ...) so one long
    sample cannot crowd out the others; an excerpt that does not fit is skipped. Empty
    when no excerpt fits.
    """
    budget = settings.persona.voice_token_budget
    # Excerpts come sample by sample; a stable sort by position makes the samples take turns.
    ordered = sorted(PersonaStore(db).excerpts(account_id), key=lambda e: e.position)
    lines: list[str] = []
    for excerpt in ordered:
        candidate = [*lines, f"- {excerpt.text}"]
        if estimate_tokens(_block(candidate)) <= budget:
            lines = candidate
    return _block(lines) if lines else ""


def _block(lines: list[str]) -> str:
    return "\n".join([HEADER, *lines, FOOTER])
