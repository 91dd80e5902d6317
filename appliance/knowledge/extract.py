"""Safe text extraction from uploaded documents.

``detect_type`` decides what an upload is from its first bytes *and* its name, and refuses
anything whose content does not match. ``extract`` reads the text in a separate Python
process (``python -I -m appliance.knowledge.extract``) with an address-space limit, a CPU
limit and a wall-clock timeout, so a parser bomb (a PDF that decompresses to gigabytes, a
file that sends a parser into a loop) kills only that process. The child answers on its
stdout with one JSON object; the parent caps how much it reads.

DOCX files are zip archives: the parent checks the archive's directory (entry count,
unpacked size, compression ratio, member names) before a child is started, and the child
refuses any DOCTYPE or entity declaration before the XML reaches the parser.

Every ``ExtractionError`` message is shown to the user, so it says what is wrong in plain
words and never contains document text or internals.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import os
import re
import selectors
import signal
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.errors import InvalidInput

log = logging.getLogger(__name__)

SUPPORTED = ("txt", "md", "html", "pdf", "docx", "csv", "json")
HEAD_BYTES = 8192

MAX_TEXT_BYTES = 20 * 1024 * 1024  # extracted text (UTF-8) per document
MAX_SECTIONS = 200_000
MAX_PDF_PAGES = 2000
MAX_CSV_ROWS = 200_000
MAX_JSON_BYTES = 20 * 1024 * 1024
MAX_JSON_DEPTH = 100
MAX_MARKUP_BYTES = 100 * 1024 * 1024  # an HTML file (markup included)
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_DIRECTORY_BYTES = 1024 * 1024  # bounds what zipfile parses in the parent
MAX_ZIP_UNPACKED = 100 * 1024 * 1024
MAX_ZIP_RATIO = 200
RATIO_EXEMPT_BYTES = 1024 * 1024  # tiny members may compress >200:1 and are harmless
GROUP_ROWS = 20  # CSV rows / JSON lines per section

# JSON escaping at most doubles the (control-character-free) text; plus per-section overhead.
_MAX_RESULT_BYTES = 2 * MAX_TEXT_BYTES + 64 * MAX_SECTIONS
_CHILD_MODULE = "appliance.knowledge.extract"
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
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # keeps \t \n \f \r
_MAX_CONTROL_RATIO = 0.05


class ExtractionError(InvalidInput):
    """The document cannot be read; the message is meant for the user.

    ``reason`` is a short code for callers and logs (``timeout``, ``memory``,
    ``mismatch``, ``zip_bomb``, ``malformed``, ...).
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Section:
    text: str
    kind: str  # "heading" | "paragraph"
    level: int = 0  # 1-6 for headings
    page: int | None = None  # 1-based, PDFs only


@dataclass(frozen=True)
class Extracted:
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
    """The document type from the file's content (magic bytes / structure) and its name.

    Args:
        filename: the name the user gave the file (only its extension is used).
        head: the first 8 KiB of the content.

    Returns:
        One of ``SUPPORTED``.

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
    if kind == "pdf":
        if looks != "pdf":
            raise ExtractionError(f"{named} but its content looks like {description}.", "mismatch")
    elif kind == "docx":
        if looks != "zip":
            raise ExtractionError(f"{named} but its content looks like {description}.", "mismatch")
        _check_small_docx(head)
    elif looks != "text":
        raise ExtractionError(f"{named} but its content looks like {description}.", "mismatch")
    elif kind == "json":
        start = _decode_head(head).lstrip()[:1]
        if start not in ("{", "["):
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
    if _looks_like_text(head):
        return "text", "plain text"
    for signature, description in _BINARY_SIGNATURES:
        if head.startswith(signature):
            return "binary", description
    if head[4:8] == b"ftyp":
        return "binary", "a video or image file (MP4, MOV or HEIC)"
    return "binary", "a binary file, not text"


def _decode_head(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        head = head[3:]
    try:
        # final=False: the 8 KiB cut may split the last character.
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return head.decode("cp1252", errors="replace")


def _looks_like_text(head: bytes) -> bool:
    return b"\x00" not in head and _mostly_printable(_decode_head(head))


def _mostly_printable(text: str) -> bool:
    controls = _CONTROL.subn("", text)[1]
    return controls <= len(text) * _MAX_CONTROL_RATIO


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
    """Extract the text of ``path`` (of type ``kind``) in a child process.

    The child runs with ``RLIMIT_AS`` of ``memory_mb``, an ``RLIMIT_CPU`` of about
    ``timeout`` seconds and no core dumps; it is killed after ``timeout`` seconds of wall
    time and always reaped.

    Raises:
        ExtractionError: took too long, needed too much memory, the file is malformed,
            encrypted, a suspected zip bomb, has too much text or none at all.
        OSError: ``path`` cannot be read (e.g. it was deleted).
    """
    if kind not in SUPPORTED:
        raise ExtractionError(f"Files of type .{kind} are not supported.", "unsupported")
    if timeout <= 0 or memory_mb <= 0:
        raise ValueError("timeout and memory_mb must be positive")
    path = Path(path)
    if path.stat().st_size == 0:
        raise ExtractionError("The file is empty.", "empty")
    if kind == "docx":
        _check_docx(path)
    payload = _run_child(path, kind, timeout, memory_mb)
    if payload.get("ok") is not True:
        reason = str(payload.get("error"))
        try:
            message = _message(reason, kind, timeout, memory_mb)
        except KeyError:
            reason, message = "malformed", _message("malformed", kind, timeout, memory_mb)
        raise ExtractionError(message, reason)
    try:
        sections = [_section(item) for item in payload["sections"]]
        pages = payload.get("pages")
        if pages is not None and not isinstance(pages, int):
            raise TypeError("pages")
    except (KeyError, TypeError, ValueError):
        raise ExtractionError(_message("crashed", kind, timeout, memory_mb), "crashed") from None
    if not sections:
        raise ExtractionError(_message("no_text", kind, timeout, memory_mb), "no_text")
    return Extracted(kind=kind, sections=sections, pages=pages)


def _section(item: Any) -> Section:
    text, kind, level, page = item
    if (
        not isinstance(text, str)
        or kind not in ("heading", "paragraph")
        or not isinstance(level, int)
        or not 0 <= level <= 6
        or not (page is None or isinstance(page, int))
    ):
        raise ValueError("bad section")
    return Section(text=text, kind=kind, level=level, page=page)


def _run_child(path: Path, kind: str, timeout: float, memory_mb: int) -> dict:
    cpu_seconds = max(1, math.ceil(timeout))
    command = [
        sys.executable,
        "-I",  # ignore PYTHON* variables, user site-packages and the working directory
        "-m",
        _CHILD_MODULE,
        kind,
        str(path),
        str(memory_mb),
        str(cpu_seconds),
    ]
    deadline = time.monotonic() + timeout
    output = bytearray()
    outcome = "done"
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # tracebacks could quote document text
        env={"PATH": os.defpath},  # the parser needs none of the service's settings
        close_fds=True,
    )
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    outcome = "timeout"
                    break
                if not selector.select(left):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                output += chunk
                if len(output) > _MAX_RESULT_BYTES:
                    outcome = "too_much_text"
                    break
        if outcome == "done":
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 0.5)
            except subprocess.TimeoutExpired:
                outcome = "timeout"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if outcome == "done" and proc.returncode == -signal.SIGXCPU:
        outcome = "timeout"
    if outcome != "done":
        log.info("extraction of a %s stopped: %s", kind, outcome)
        return {"ok": False, "error": outcome}
    try:
        payload = json.loads(bytes(output))
    except ValueError:
        payload = None
    if proc.returncode != 0 or not isinstance(payload, dict):
        log.warning("extraction of a %s failed: child exit status %s", kind, proc.returncode)
        return {"ok": False, "error": "crashed"}
    return payload


def _message(reason: str, kind: str, timeout: float, memory_mb: int) -> str:
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
    return messages[reason]


_SCANNED = " It may contain only scanned images; text recognition is not supported."


# --- the DOCX container, checked in the parent --------------------------------------------


def _check_docx(path: Path) -> None:
    """Refuse zip bombs and zip-slip names before any child parses the archive."""
    bomb = "; it was refused as a possible zip bomb."
    _check_zip_directory(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, OSError):
        raise ExtractionError(_message("malformed", "docx", 0, 0), "malformed") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise ExtractionError(
            f"This Word document contains too many files (more than {MAX_ZIP_ENTRIES}){bomb}",
            "zip_bomb",
        )
    names: set[str] = set()
    total = 0
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
                "This Word document contains a file with an unsafe path (such as ../ or an "
                "absolute path); it was refused.",
                "unsafe_path",
            )
        if name in names:
            raise ExtractionError(_message("malformed", "docx", 0, 0), "malformed")
        names.add(name)
        if info.flag_bits & 0x1:
            raise ExtractionError(
                "This Word document is password-protected. Remove the password and upload "
                "it again.",
                "encrypted",
            )
        total += info.file_size
        if info.file_size >= RATIO_EXEMPT_BYTES and (
            info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1)
        ):
            raise ExtractionError(
                f"This Word document contains a part compressed more than {MAX_ZIP_RATIO}:1{bomb}",
                "zip_bomb",
            )
    if total > MAX_ZIP_UNPACKED:
        raise ExtractionError(
            "This Word document would unpack to more than "
            f"{MAX_ZIP_UNPACKED // (1024 * 1024)} MB{bomb}",
            "zip_bomb",
        )
    if "word/document.xml" not in names:
        raise ExtractionError(_NOT_DOCX, "not_docx")


def _check_zip_directory(path: Path) -> None:
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
        raise ExtractionError(_message("malformed", "docx", 0, 0), "malformed")
    entries, directory_size, directory_offset = struct.unpack("<2xHLL", tail[at + 8 : at + 20])
    if (
        (at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07")  # ZIP64: Word never needs it
        or entries > MAX_ZIP_ENTRIES
        or directory_size > MAX_ZIP_DIRECTORY_BYTES
        or directory_offset == 0xFFFFFFFF
    ):
        raise ExtractionError(
            f"This Word document contains too many files (more than {MAX_ZIP_ENTRIES}); it "
            "was refused as a possible zip bomb.",
            "zip_bomb",
        )


# --- the child --------------------------------------------------------------------------


class _Refused(Exception):
    """Stops the child with a reason code; the parent turns it into the user's message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Sink:
    """The sections found so far, capped in size."""

    def __init__(self) -> None:
        self.sections: list[list[Any]] = []
        self.size = 0

    def add(self, text: str, kind: str = "paragraph", level: int = 0, page: int | None = None):
        text = _clean(text)
        if not text:
            return
        self.size += len(text.encode("utf-8"))
        if self.size > MAX_TEXT_BYTES:
            raise _Refused("too_much_text")
        if len(self.sections) >= MAX_SECTIONS:
            raise _Refused("too_many_sections")
        self.sections.append([text, kind, level, page])


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = _CONTROL.sub("", text)
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def _child_main(argv: list[str]) -> None:
    kind, path, memory_mb, cpu_seconds = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    # The result goes to the original stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.dont_write_bytecode = True
    _limit_resources(memory_mb, cpu_seconds)
    reserve = bytearray(1 << 20)  # freed on MemoryError, so the answer can still be sent
    sink = _Sink()
    try:
        pages = _READERS[kind](path, sink)
        if not sink.sections:
            raise _Refused("no_text")
        result: dict[str, Any] = {"ok": True, "pages": pages, "sections": sink.sections}
    except _Refused as refused:
        result = {"ok": False, "error": refused.reason}
    except MemoryError:
        del reserve
        sink.sections = []
        result = {"ok": False, "error": "memory"}
    except Exception:  # a parser's exception on hostile input: report, never show it
        result = {"ok": False, "error": "malformed"}
    try:
        answer = json.dumps(result, ensure_ascii=False).encode("utf-8")
    except MemoryError:
        result = sink = None  # type: ignore[assignment]
        answer = b'{"ok": false, "error": "memory"}'
    out.write(answer)
    out.flush()


def _limit_resources(memory_mb: int, cpu_seconds: int) -> None:
    import resource

    def cap(which: int, soft: int, hard: int) -> None:
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))

    memory = memory_mb * 1024 * 1024
    cap(resource.RLIMIT_AS, memory, memory)
    cap(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)  # SIGXCPU, then SIGKILL
    cap(resource.RLIMIT_CORE, 0, 0)


def _read_limited(path: Path, limit: int, reason: str) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _Refused(reason)
    return data


def _decode(data: bytes) -> str:
    """UTF-8 (BOM allowed), else cp1252/latin-1 if mostly printable; never binary."""
    if b"\x00" in data:
        raise _Refused("binary")
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    if not _mostly_printable(text):
        raise _Refused("binary")
    return text


def _read_txt(path: Path, sink: _Sink) -> None:
    text = _decode(_read_limited(path, MAX_TEXT_BYTES, "too_much_text"))
    for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        sink.add(block)


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")


def _read_md(path: Path, sink: _Sink) -> None:
    text = _decode(_read_limited(path, MAX_TEXT_BYTES, "too_much_text"))
    block: list[str] = []
    fence = ""

    def flush() -> None:
        sink.add("\n".join(block))
        block.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if fence:  # inside a fenced code block: everything is text, blank lines too
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = ""
                flush()
            else:
                block.append(line)
            continue
        if m := _FENCE.match(line):
            flush()
            fence = m.group(1)
        elif not line.strip():
            flush()
        elif m := _ATX.match(line):
            flush()
            sink.add(m.group(2) or "", "heading", len(m.group(1)))
        elif (m := _SETEXT.match(line)) and block and not _LIST_ITEM.match(block[-1]):
            sink.add(
                " ".join(s.strip() for s in block), "heading", 1 if line.strip()[0] == "=" else 2
            )
            block.clear()
        elif _RULE.match(line):  # a thematic break ends the block and is not text
            flush()
        else:
            block.append(line)
    flush()


_SKIP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "title", "svg", "iframe", "object", "canvas"}
)
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "li", "ul", "ol", "pre", "blockquote", "section", "article", "header",
        "footer", "main", "nav", "aside", "table", "thead", "tbody", "tfoot", "dl", "dt", "dd",
        "figure", "figcaption", "caption", "address", "hr", "form", "fieldset", "details",
        "summary", "body", "html",
    }
)  # fmt: skip
_HEADING_TAGS = {f"h{n}": n for n in range(1, 7)}


def _read_html(path: Path, sink: _Sink) -> None:
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)  # entities decoded; nothing is run
            self.buffer: list[str] = []
            self.row: list[str] = []
            self.skip = self.pre = self.cell = self.heading = 0

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag in _SKIP_TAGS:
                self.skip += 1
            elif self.skip:
                return
            elif tag == "br":
                self.buffer.append("\n")
            elif tag in _HEADING_TAGS:
                self.flush()
                self.heading = _HEADING_TAGS[tag]
            elif tag in ("td", "th"):
                self.cell += 1
                self.buffer_cell()
            elif tag == "tr":
                self.flush_row()
            elif tag in _BLOCK_TAGS:
                self.block_boundary()
                self.pre += tag == "pre"

        def handle_endtag(self, tag: str) -> None:
            if tag in _SKIP_TAGS:
                self.skip = max(0, self.skip - 1)
            elif self.skip:
                return
            elif tag in _HEADING_TAGS and self.heading:
                sink.add(" ".join("".join(self.buffer).split()), "heading", self.heading)
                self.buffer.clear()
                self.heading = 0
            elif tag in ("td", "th"):
                self.cell = max(0, self.cell - 1)
                self.buffer_cell()
            elif tag in ("tr", "table"):
                self.flush_row()
            elif tag in _BLOCK_TAGS:
                self.block_boundary()
                self.pre = max(0, self.pre - (tag == "pre"))

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.buffer.append(data if self.pre else re.sub(r"\s+", " ", data))

        def block_boundary(self) -> None:
            if self.cell or self.heading:
                self.buffer.append("\n")
            else:
                self.flush()

        def buffer_cell(self) -> None:
            text = " ".join("".join(self.buffer).split())
            if text:
                self.row.append(text)
            self.buffer.clear()

        def flush_row(self) -> None:
            self.buffer_cell()
            sink.add(" | ".join(self.row))
            self.row.clear()

        def flush(self) -> None:
            text = "".join(self.buffer)
            self.buffer.clear()
            if not self.pre:
                text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
            sink.add(text)

    parser = Text()
    parser.feed(_decode(_read_limited(path, MAX_MARKUP_BYTES, "too_large")))
    parser.close()
    parser.flush_row()
    parser.flush()


def _read_csv(path: Path, sink: _Sink) -> None:
    text = _decode(_read_limited(path, MAX_TEXT_BYTES, "too_much_text"))
    sample = text[:16384]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    header: list[str] | None = None
    group: list[str] = []
    rows = 0
    for row in csv.reader(io.StringIO(text, newline=""), dialect):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() or f"column {i + 1}" for i, cell in enumerate(row)]
            continue
        rows += 1
        if rows > MAX_CSV_ROWS:
            raise _Refused("too_many_rows")
        pairs = [
            f"{header[i] if i < len(header) else f'column {i + 1}'}: {cell.strip()}"
            for i, cell in enumerate(row)
            if cell.strip()
        ]
        group.append("; ".join(pairs))
        if len(group) >= GROUP_ROWS:
            sink.add("\n".join(group))
            group = []
    sink.add("\n".join(group))
    if header is not None and rows == 0:
        sink.add("Columns: " + ", ".join(header))


def _read_json(path: Path, sink: _Sink) -> None:
    text = _decode(_read_limited(path, MAX_JSON_BYTES, "too_large"))
    try:
        value = json.loads(text)
    except RecursionError:  # the C decoder stops deep nesting with RecursionError
        raise _Refused("too_deep") from None
    except ValueError:
        raise _Refused("malformed") from None
    del text
    lines: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:  # iterative: no recursion on hostile nesting
        where, item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _Refused("too_deep")
        if isinstance(item, dict) and item:
            for key, child in reversed(list(item.items())):
                stack.append((f"{where}.{key}" if where else str(key), child, depth + 1))
            continue
        if isinstance(item, list) and item:
            for i in range(len(item) - 1, -1, -1):
                stack.append((f"{where}[{i}]", item[i], depth + 1))
            continue
        # strings with whitespace collapsed; numbers, true/false/null, {} and [] as JSON
        rendered = " ".join(item.split()) if isinstance(item, str) else json.dumps(item)
        lines.append(f"{where}: {rendered}" if where else rendered)
        if len(lines) >= GROUP_ROWS:
            sink.add("\n".join(lines))
            lines = []
    sink.add("\n".join(lines))


_W_NAMESPACES = (
    "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}",
    "{http://purl.oclc.org/ooxml/wordprocessingml/main}",  # Strict OOXML
)
_DTD = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_HEADING_STYLE = re.compile(r"(?i)heading\s*([1-6])")


def _local(tag: str) -> str | None:
    for namespace in _W_NAMESPACES:
        if tag.startswith(namespace):
            return tag[len(namespace) :]
    return None


def _w_val(attrib: dict[str, str]) -> str:
    for namespace in _W_NAMESPACES:
        if namespace + "val" in attrib:
            return attrib[namespace + "val"]
    return ""


class _XmlTarget:
    """Shared by the DOCX targets: the element stack, and DOCTYPE refused (a backstop)."""

    def __init__(self) -> None:
        self.stack: list[str | None] = []

    def doctype(self, name: str, pubid: str, system: str) -> None:
        raise _Refused("doctype")

    def close(self) -> None:
        return None

    def data(self, text: str) -> None:
        return None


class _StyleNames(_XmlTarget):
    """``word/styles.xml``: style id -> style name (ids are localised, names are not)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, str] = {}
        self.style_id = ""

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        name = _local(tag)
        if name == "style":
            self.style_id = next((v for k, v in attrib.items() if k.endswith("}styleId")), "")
        elif name == "name" and self.stack and self.stack[-1] == "style" and self.style_id:
            self.names[self.style_id] = _w_val(attrib)
        self.stack.append(name)

    def end(self, tag: str) -> None:
        self.stack.pop()


class _DocumentText(_XmlTarget):
    """``word/document.xml``: one section per ``w:p``; nested paragraphs come out first."""

    def __init__(self, sink: _Sink, style_names: dict[str, str]) -> None:
        super().__init__()
        self.sink = sink
        self.style_names = style_names
        self.paragraphs: list[tuple[list[str], list[str]]] = []  # (text parts, [style])
        self.in_text = 0
        self.pending = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        name = _local(tag)
        parent = self.stack[-1] if self.stack else None
        self.stack.append(name)
        if name == "p":
            self.paragraphs.append(([], []))
        elif not self.paragraphs:
            return
        elif parent == "r" and name == "t":
            self.in_text += 1
        elif parent == "r" and name == "tab":
            self.paragraphs[-1][0].append("\t")
        elif parent == "r" and name in ("br", "cr"):
            self.paragraphs[-1][0].append("\n")
        elif parent == "pPr" and name == "pStyle":
            self.paragraphs[-1][1].append(_w_val(attrib))

    def end(self, tag: str) -> None:
        name = self.stack.pop()
        if name == "t" and self.stack and self.stack[-1] == "r" and self.in_text:
            self.in_text -= 1
        elif name == "p" and self.paragraphs:
            parts, style = self.paragraphs.pop()
            self.pending -= sum(len(part) for part in parts)
            level = self.heading_level(style[0] if style else "")
            self.sink.add("".join(parts), "heading" if level else "paragraph", level)

    def data(self, text: str) -> None:
        if self.in_text and self.paragraphs:
            self.pending += len(text)
            if self.pending > MAX_TEXT_BYTES:
                raise _Refused("too_much_text")
            self.paragraphs[-1][0].append(text)

    def heading_level(self, style_id: str) -> int:
        for name in (style_id, self.style_names.get(style_id, "")):
            if name.lower() == "title":
                return 1
            if m := _HEADING_STYLE.fullmatch(name.strip()):
                return int(m.group(1))
        return 0


def _parse_member(zf: zipfile.ZipFile, name: str, target: _XmlTarget) -> None:
    """Stream one XML member into ``target``.

    Each chunk is searched for a DOCTYPE or ENTITY declaration *before* the parser sees it,
    and encodings in which that search could miss one (UTF-16/32, EBCDIC...) are refused;
    so no entity is ever declared and none can expand (XXE, billion laughs). The target's
    ``doctype`` refuses too, as a second line.
    """
    import xml.etree.ElementTree as ET

    parser = ET.XMLParser(target=target)  # noqa: S314 - see above
    tail = b""
    total = 0
    first = True
    with zf.open(name) as member:
        while chunk := member.read(1 << 16):
            total += len(chunk)
            if total > MAX_ZIP_UNPACKED:
                raise _Refused("too_large")
            if first:
                first = False
                body = chunk.removeprefix(codecs.BOM_UTF8)
                m = _XML_ENCODING.match(body)
                encoding = m.group(1).lower() if m else b"utf-8"
                if encoding not in (b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1"):
                    raise _Refused("encoding")
            if b"\x00" in chunk:
                raise _Refused("encoding")
            window = tail + chunk
            if _DTD.search(window):
                raise _Refused("doctype")
            tail = window[-16:]
            parser.feed(chunk)
    parser.close()


def _read_docx(path: Path, sink: _Sink) -> None:
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        styles = _StyleNames()
        if "word/styles.xml" in names:
            _parse_member(zf, "word/styles.xml", styles)
        _parse_member(zf, "word/document.xml", _DocumentText(sink, styles.names))


def _read_pdf(path: Path, sink: _Sink) -> int:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # "encrypted" with an empty password: readable
        except Exception:
            opened = 0
        if not opened:
            raise _Refused("encrypted")
    pages = len(reader.pages)
    if pages > MAX_PDF_PAGES:
        raise _Refused("too_many_pages")
    for number, page in enumerate(reader.pages, start=1):
        for block in re.split(r"\n[ \t]*\n", page.extract_text() or ""):
            sink.add(block, page=number)
    return pages


_READERS: dict[str, Any] = {
    "txt": _read_txt,
    "md": _read_md,
    "html": _read_html,
    "csv": _read_csv,
    "json": _read_json,
    "docx": _read_docx,
    "pdf": _read_pdf,
}


if __name__ == "__main__":
    _child_main(sys.argv[1:])
