"""Format readers: the text of a TXT, Markdown, HTML, CSV, JSON, DOCX or PDF file as sections.

Each reader adds what it finds to a ``Sink``, which caps the text's size and section count;
``Refused`` stops it with a reason code that ``extract`` turns into the user's message. All
but the plain text and Markdown readers run only in the sandboxed worker (``sandbox.py``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

MAX_TEXT_BYTES = 20 * 1024 * 1024  # extracted text (UTF-8) per document
MAX_SECTIONS = 200_000
MAX_PDF_PAGES = 2000
MAX_CSV_ROWS = 200_000
MAX_JSON_BYTES = 20 * 1024 * 1024
MAX_JSON_DEPTH = 100
MAX_MARKUP_BYTES = 100 * 1024 * 1024  # an HTML file (markup included)
MAX_ZIP_UNPACKED = 100 * 1024 * 1024
GROUP_ROWS = 20  # CSV rows / JSON lines per section
CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # keeps \t \n \f \r
MAX_CONTROL_RATIO = 0.05


def mostly_printable(text: str) -> bool:
    controls = CONTROL.subn("", text)[1]
    return controls <= len(text) * MAX_CONTROL_RATIO


class Refused(Exception):
    """Stops the child with a reason code; the parent turns it into the user's message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sink:
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
            raise Refused("too_much_text")
        if len(self.sections) >= MAX_SECTIONS:
            raise Refused("too_many_sections")
        self.sections.append([text, kind, level, page])


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean(text: str) -> str:
    text = _newlines(text).replace("\f", "\n")
    text = CONTROL.sub("", text)
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def _read_text(path: Path, limit: int = MAX_TEXT_BYTES, reason: str = "too_much_text") -> str:
    """At most ``limit`` bytes, decoded: UTF-8 (BOM allowed), else cp1252/latin-1 if mostly
    printable; never binary."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Refused(reason)
    if b"\x00" in data:
        raise Refused("binary")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    if not mostly_printable(text):
        raise Refused("binary")
    return text


def _read_txt(path: Path, sink: Sink) -> None:
    for block in re.split(r"\n[ \t]*\n", _newlines(_read_text(path))):
        sink.add(block)


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")


def _read_md(path: Path, sink: Sink) -> None:
    block: list[str] = []
    fence = ""

    def flush() -> None:
        sink.add("\n".join(block))
        block.clear()

    for line in _newlines(_read_text(path)).split("\n"):
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


def _read_html(path: Path, sink: Sink) -> None:
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
                sink.add(self.take(), "heading", self.heading)
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

        def take(self) -> str:
            """The buffered text, whitespace collapsed; the buffer is emptied."""
            text = " ".join("".join(self.buffer).split())
            self.buffer.clear()
            return text

        def buffer_cell(self) -> None:
            if text := self.take():
                self.row.append(text)

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
    parser.feed(_read_text(path, MAX_MARKUP_BYTES, "too_large"))
    parser.close()
    parser.flush_row()
    parser.flush()


def _read_csv(path: Path, sink: Sink) -> None:
    text = _read_text(path)
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
            raise Refused("too_many_rows")
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


def _read_json(path: Path, sink: Sink) -> None:
    try:
        value = json.loads(_read_text(path, MAX_JSON_BYTES, "too_large"))
    except RecursionError:  # the C decoder stops deep nesting with RecursionError
        raise Refused("too_deep") from None
    except ValueError:
        raise Refused("malformed") from None
    lines: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:  # iterative: no recursion on hostile nesting
        where, item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise Refused("too_deep")
        if isinstance(item, dict) and item:
            for key, child in reversed(list(item.items())):
                stack.append((f"{where}.{key}" if where else str(key), child, depth + 1))
            continue
        if isinstance(item, list) and item:
            stack += [(f"{where}[{i}]", v, depth + 1) for i, v in enumerate(item)][::-1]
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
    return next((tag[len(ns) :] for ns in _W_NAMESPACES if tag.startswith(ns)), None)


def _w_val(attrib: dict[str, str]) -> str:
    return next((attrib[ns + "val"] for ns in _W_NAMESPACES if ns + "val" in attrib), "")


class _XmlTarget:
    """Shared by the DOCX targets: the element stack, and DOCTYPE refused (a backstop)."""

    def __init__(self) -> None:
        self.stack: list[str | None] = []

    def doctype(self, name: str, pubid: str, system: str) -> None:
        raise Refused("doctype")


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

    def __init__(self, sink: Sink, style_names: dict[str, str]) -> None:
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
                raise Refused("too_much_text")
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
                raise Refused("too_large")
            if first:
                first = False
                body = chunk.removeprefix(codecs.BOM_UTF8)
                m = _XML_ENCODING.match(body)
                encoding = m.group(1).lower() if m else b"utf-8"
                if encoding not in (b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1"):
                    raise Refused("encoding")
            if b"\x00" in chunk:
                raise Refused("encoding")
            window = tail + chunk
            if _DTD.search(window):
                raise Refused("doctype")
            tail = window[-16:]
            parser.feed(chunk)
    parser.close()


def _read_docx(path: Path, sink: Sink) -> None:
    with zipfile.ZipFile(path) as zf:
        styles = _StyleNames()
        if "word/styles.xml" in zf.namelist():
            _parse_member(zf, "word/styles.xml", styles)
        _parse_member(zf, "word/document.xml", _DocumentText(sink, styles.names))


def _read_pdf(path: Path, sink: Sink) -> int:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")  # "encrypted" with an empty password: readable
        except Exception:
            opened = 0
        if not opened:
            raise Refused("encrypted")
    pages = len(reader.pages)
    if pages > MAX_PDF_PAGES:
        raise Refused("too_many_pages")
    for number, page in enumerate(reader.pages, start=1):
        for block in re.split(r"\n[ \t]*\n", page.extract_text() or ""):
            sink.add(block, page=number)
    return pages


def read(kind: str, path: Path) -> dict[str, Any]:
    """``{"ok": True, "sections", "pages"}``, or ``{"ok": False, "error": reason}``."""
    sink = Sink()
    try:
        pages = READERS[kind](path, sink)
    except Refused as refused:
        return {"ok": False, "error": refused.reason}
    return {"ok": True, "pages": pages, "sections": sink.sections}


READERS: dict[str, Any] = {
    "txt": _read_txt,
    "md": _read_md,
    "html": _read_html,
    "csv": _read_csv,
    "json": _read_json,
    "docx": _read_docx,
    "pdf": _read_pdf,
}
