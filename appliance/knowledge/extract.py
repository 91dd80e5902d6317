"""Safe text extraction from uploaded documents.

``detect_type`` decides what an upload is from its first bytes *and* its name, and refuses
anything whose content does not match. ``extract`` reads plain text and Markdown in this
process (at most ``MAX_TEXT_BYTES``, decoded and split: nothing in them can make that take
long or grow), every other format in the sandboxed worker (``sandbox.py``), so a parser
bomb kills only that process. A DOCX's zip directory is checked here (``check_archive``)
before the worker opens it.

Every ``ExtractionError`` message is shown to the user: plain words, never document text.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import msgspec

from appliance.errors import InvalidInput
from appliance.knowledge.readers import (
    MAX_CSV_ROWS,
    MAX_JSON_DEPTH,
    MAX_PDF_PAGES,
    MAX_SECTIONS,
    MAX_TEXT_BYTES,
    MAX_ZIP_UNPACKED,
    mostly_printable,
    read,
)
from appliance.knowledge.sandbox import Sandbox

SUPPORTED = ("txt", "md", "html", "pdf", "docx", "csv", "json")
HEAD_BYTES = 8192

MAX_ZIP_ENTRIES = 1000
MAX_ZIP_DIRECTORY_BYTES = 1024 * 1024  # bounds what zipfile parses in the parent
MAX_ZIP_RATIO = 200
RATIO_EXEMPT_BYTES = 1024 * 1024  # tiny members may compress >200:1 and are harmless

#: Read without a sandbox: text decoded and split, within MAX_TEXT_BYTES.
IN_PROCESS = ("txt", "md")
_ALIASES = {"htm": "html", "markdown": "md"}
_LABELS = {
    "txt": "text file",
    "md": "Markdown file",
    "html": "HTML page",
    "pdf": "PDF",
    "docx": "Word document",
    "csv": "CSV file",
    "json": "JSON file",
}


class ExtractionError(InvalidInput):
    """The document cannot be read; the message is meant for the user.

    ``reason`` is a short code for callers and logs (``timeout``, ``memory``,
    ``mismatch``, ``zip_bomb``, ``malformed``, ...).
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class Section(msgspec.Struct, frozen=True, array_like=True):
    """A heading or paragraph; readers send it as ``[text, kind, level, page]``."""

    text: str
    kind: Literal["heading", "paragraph"]
    level: Annotated[int, msgspec.Meta(ge=0, le=6)] = 0  # 1-6 for headings
    page: int | None = None  # 1-based, PDFs only


class Extracted(msgspec.Struct, frozen=True):
    kind: str
    sections: list[Section]
    pages: int | None = None


# --- detect_type ------------------------------------------------------------------------

_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "a Linux program (ELF)"),
    (b"MZ", "a Windows program"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old-style Office file (.doc/.xls) or an encrypted one",
    ),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"RIFF", "a media file (WebP, WAV or AVI)"),
    (b"OggS", "an Ogg media file"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"\xca\xfe\xba\xbe", "a compiled program"),
)
_HTML_START = re.compile(
    r"<(?:!doctype\s+html|html|head|body|meta|title|div|p|h[1-6]|table|ul|ol|span|a|section"
    r"|article|header|main|nav|link|style|script|!--)[\s>/]",
    re.IGNORECASE,
)


def detect_type(filename: str, head: bytes) -> str:
    """One of ``SUPPORTED``, from the file's name (its extension) and first 8 KiB.

    Raises:
        ExtractionError: the name is unsafe, the type is unsupported, the file is empty, or
            the content does not match the extension.
    """
    if (
        not filename
        or filename in (".", "..")
        or any(c in filename for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in filename)
    ):
        raise ExtractionError(
            "This file name is not allowed: it must not be empty, '.' or '..', or contain "
            "slashes, backslashes or control characters.",
            "unsafe_name",
        )
    suffix = PurePosixPath(filename).suffix.lower().lstrip(".")
    kind = _ALIASES.get(suffix, suffix)
    if kind not in SUPPORTED:
        what = f"Files of type .{suffix}" if suffix else "Files without an extension"
        raise ExtractionError(
            f"{what} are not supported. Supported types: {', '.join(SUPPORTED)}.",
            "unsupported",
        )
    head = head[:HEAD_BYTES]
    if not head:
        raise ExtractionError("The file is empty.", "empty")
    looks, description = _sniff(head)
    named = f"This file is named .{suffix}"
    if looks != {"pdf": "pdf", "docx": "zip"}.get(kind, "text"):
        raise ExtractionError(f"{named} but its content looks like {description}.", "mismatch")
    if kind == "docx":
        _check_small_docx(head)
    elif kind == "json" and _decode_head(head).lstrip()[:1] not in ("{", "["):
        raise ExtractionError(
            f"{named} but it does not contain JSON (it should start with {{ or [).", "mismatch"
        )
    elif kind == "html" and not _HTML_START.search(_decode_head(head)[:4096]):
        raise ExtractionError(f"{named} but its content does not look like HTML.", "mismatch")
    return kind


def _sniff(head: bytes) -> tuple[str, str]:
    """What ``head`` looks like: (``pdf`` | ``zip`` | ``binary`` | ``text``, description)."""
    if head.lstrip().startswith(b"%PDF-"):  # a PDF may be pure ASCII: check it first
        return "pdf", "a PDF document"
    if head.startswith(_ZIP_SIGNATURES):
        return "zip", "a ZIP archive"
    if b"\x00" not in head and mostly_printable(_decode_head(head)):
        return "text", "plain text"
    for signature, description in _BINARY_SIGNATURES:
        if head.startswith(signature):
            return "binary", description
    if head[4:8] == b"ftyp":
        return "binary", "a video or image file (MP4, MOV or HEIC)"
    return "binary", "a binary file, not text"


def _decode_head(head: bytes) -> str:
    head = head.removeprefix(codecs.BOM_UTF8)
    try:
        # final=False: the 8 KiB cut may split the last character.
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return head.decode("cp1252", errors="replace")


def _check_small_docx(head: bytes) -> None:
    """If the whole zip is in ``head``, make sure it is one and holds a Word document.

    A head shorter than ``HEAD_BYTES`` is the whole file; a longer one may still end with
    the zip's end record. Otherwise ``extract`` checks the full file later.
    """
    complete = len(head) < HEAD_BYTES
    if not complete and b"PK\x05\x06" not in head:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(head)) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, OSError):
        if complete:
            raise ExtractionError(
                "This file is named .docx but it is not a valid Word document (its ZIP "
                "container is damaged).",
                "mismatch",
            ) from None
        return
    if "word/document.xml" not in names:
        raise ExtractionError(_NOT_DOCX, "mismatch")


_NOT_DOCX = (
    "This file is named .docx but it is a ZIP archive without a Word document inside "
    "(word/document.xml is missing)."
)


# --- extract (parent side) ----------------------------------------------------------------


def extract(path: Path, kind: str, *, timeout: float = 60, memory_mb: int = 512) -> Extracted:
    """Extract the text of ``path`` (of type ``kind``), in the sandbox unless ``IN_PROCESS``.

    Raises:
        ExtractionError: took too long, needed too much memory, the file is malformed,
            encrypted, a suspected zip bomb, has too much text or none at all.
        OSError: ``path`` cannot be read (e.g. it was deleted).
    """
    if kind not in SUPPORTED:
        raise ExtractionError(f"Files of type .{kind} are not supported.", "unsupported")
    path = Path(path)
    if path.stat().st_size == 0:
        raise ExtractionError("The file is empty.", "empty")
    if kind == "docx" and "word/document.xml" not in {i.filename for i in check_archive(path)}:
        raise ExtractionError(_NOT_DOCX, "not_docx")
    if kind in IN_PROCESS:
        payload = read(kind, path)
    else:
        payload = Sandbox.for_thread(memory_mb).extract(kind, path, timeout)
    if payload.get("ok") is not True:
        raise _error(str(payload.get("error")), kind, timeout, memory_mb)
    try:  # the sandbox's answer is checked: a hostile document may have steered the child
        extracted = msgspec.convert({**payload, "kind": kind}, Extracted)
    except msgspec.ValidationError:
        raise _error("crashed", kind, timeout, memory_mb) from None
    if not extracted.sections:
        raise _error("no_text", kind, timeout, memory_mb)
    return extracted


def _error(reason: str, kind: str, timeout: float, memory_mb: int) -> ExtractionError:
    """The user's message for ``reason`` (an unknown one reads as ``malformed``)."""
    label = _LABELS[kind]
    text_mb = MAX_TEXT_BYTES // (1024 * 1024)
    messages = {
        "timeout": f"Reading this {label} took too long (more than {timeout:g} seconds). "
        "It may be damaged or unusually complex.",
        "memory": f"Reading this {label} needed more memory than allowed ({memory_mb} MB). "
        "It may be damaged or built to exhaust memory.",
        "crashed": f"The reader stopped unexpectedly on this {label}. "
        "It may be damaged or unusually complex.",
        "encrypted": "This is an encrypted PDF. Remove the password and upload it again.",
        "too_many_pages": f"This PDF has more than {MAX_PDF_PAGES} pages, more than can be "
        "indexed.",
        "too_much_text": f"This {label} contains too much text (more than {text_mb} MB) to index.",
        "too_many_sections": f"This {label} has more than {MAX_SECTIONS:,} separate "
        "paragraphs, more than can be indexed.",
        "too_large": f"This {label} is too large to read.",
        "too_many_rows": f"This CSV file has more than {MAX_CSV_ROWS:,} rows, more than can "
        "be indexed.",
        "too_deep": f"This JSON file is nested more than {MAX_JSON_DEPTH} levels deep, "
        "which is not supported.",
        "binary": f"This file does not contain readable text; it does not look like a {label}.",
        "doctype": "This Word document contains a DOCTYPE or entity declaration, which Word "
        "never writes; it was refused for safety.",
        "encoding": "This Word document uses an unsupported text encoding.",
        "no_text": f"No text was found in this {label}." + (_SCANNED if kind == "pdf" else ""),
        "malformed": f"This {label} could not be read. It may be damaged or not really a {label}.",
    }
    reason = reason if reason in messages else "malformed"
    return ExtractionError(messages[reason], reason)


_SCANNED = " It may contain only scanned images; text recognition is not supported."


# --- zip archives (DOCX files, ZIP uploads), checked in the parent -----------------------


def check_archive(path: Path, what: str = "This Word document") -> list[zipfile.ZipInfo]:
    """The members of the zip archive at ``path``, once it passed the caps every archive
    meets (DOCX files, and ZIP uploads of many documents): entry count, directory size,
    unpacked size, compression ratio, member names, no encryption.

    Raises:
        ExtractionError: naming ``what`` ("This Word document", "This ZIP archive").
    """
    bomb = "; it was refused as a possible zip bomb."
    malformed = f"{what} could not be read. It may be damaged."
    too_many = f"{what} contains too many files (more than {MAX_ZIP_ENTRIES}){bomb}"
    _check_zip_directory(path, malformed, too_many)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, OSError):
        raise ExtractionError(malformed, "malformed") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ExtractionError(too_many, "zip_bomb")
    names: set[str] = set()
    for info in infos:
        name = info.filename
        parts = re.split(r"[/\\]", name)
        if (
            name.startswith(("/", "\\"))
            or re.match(r"[A-Za-z]:", name)
            or ".." in parts
            or "\x00" in name
        ):
            raise ExtractionError(
                f"{what} contains a file with an unsafe path (such as ../ or an absolute "
                "path); it was refused.",
                "unsafe_path",
            )
        if name in names:
            raise ExtractionError(malformed, "malformed")
        names.add(name)
        if info.flag_bits & 0x1:
            raise ExtractionError(
                f"{what} is password-protected. Remove the password and upload it again.",
                "encrypted",
            )
        if info.file_size >= RATIO_EXEMPT_BYTES and (
            info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1)
        ):
            raise ExtractionError(
                f"{what} contains a part compressed more than {MAX_ZIP_RATIO}:1{bomb}",
                "zip_bomb",
            )
    if sum(info.file_size for info in infos) > MAX_ZIP_UNPACKED:
        raise ExtractionError(
            f"{what} would unpack to more than {MAX_ZIP_UNPACKED // (1024 * 1024)} MB{bomb}",
            "zip_bomb",
        )
    return infos


def _check_zip_directory(path: Path, malformed: str, too_many: str) -> None:
    """Read the end-of-central-directory record the way ``zipfile`` does, and refuse a
    directory too big to parse (``zipfile`` builds one object per entry, in the parent)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_length = min(size, 22 + 65536)  # the record, and a comment of up to 64 KiB
        f.seek(size - tail_length)
        tail = f.read(tail_length)
    if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00":
        at = len(tail) - 22
    else:
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ExtractionError(malformed, "malformed")
    entries, directory_size, directory_offset = struct.unpack("<2xHLL", tail[at + 8 : at + 20])
    if (
        (at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07")  # ZIP64: Word never needs it
        or entries > MAX_ZIP_ENTRIES
        or directory_size > MAX_ZIP_DIRECTORY_BYTES
        or directory_offset == 0xFFFFFFFF
    ):
        raise ExtractionError(too_many, "zip_bomb")
