"""Document text extraction: types checked by content, text per format, and bombs refused.

Every file is made here, in ``tmp_path``; nothing is mocked. Extraction really runs in a
child process with real memory and time limits.
"""

from __future__ import annotations

import json
import time
import zipfile
import zlib
from pathlib import Path

import psutil
import pytest
from pdf_support import pdf_bytes
from pypdf import PdfReader, PdfWriter

from appliance.errors import InvalidInput
from appliance.knowledge.extract import (
    SUPPORTED,
    ExtractionError,
    Section,
    detect_type,
    extract,
)

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
HELLO = b"BT /F1 12 Tf 72 720 Td (Hello canary) Tj ET"


def para(text: str, style: str | None = None) -> str:
    props = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
    return f"<w:p>{props}<w:r><w:t>{text}</w:t></w:r></w:p>"


def document_xml(*paragraphs: str, prolog: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'{prolog}<w:document xmlns:w="{W}"><w:body>{"".join(paragraphs)}</w:body></w:document>'
    ).encode()


def docx(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", b'<?xml version="1.0"?><Types/>')
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def refused(path: Path, kind: str, **limits) -> ExtractionError:
    with pytest.raises(ExtractionError) as caught:
        extract(path, kind, **limits)
    return caught.value


# --- detect_type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("notes.TXT", b"plain words\n", "txt"),
        ("readme.md", b"# Title\n", "md"),
        ("guide.markdown", b"text", "md"),
        ("page.htm", b"<!DOCTYPE html><html><body>x</body></html>", "html"),
        ("frag.html", b"\n  <div><p>Hello</p></div>", "html"),
        ("paper.pdf", pdf_bytes(HELLO)[:8192], "pdf"),
        ("data.csv", b"a,b\n1,2\n", "csv"),
        ("data.json", b'\xef\xbb\xbf  \n{"a": 1}', "json"),
        ("list.json", b"[1, 2]", "json"),
    ],
)
def test_detect_type_accepts_matching_content(name, head, kind):
    assert detect_type(name, head) == kind
    assert kind in SUPPORTED


def test_detect_type_accepts_a_real_docx(tmp_path):
    path = docx(tmp_path / "a.docx", {"word/document.xml": document_xml(para("Hi"))})
    assert detect_type("Report.DOCX", path.read_bytes()[:8192]) == "docx"


@pytest.mark.parametrize(
    ("name", "head", "words"),
    [
        ("photo.txt", PNG, ["named .txt", "PNG image"]),
        ("paper.pdf", b"Just some words, no PDF here.\n", ["named .pdf", "plain text"]),
        ("program.md", b"\x7fELF\x02\x01\x01\x00" + bytes(64), ["named .md", "Linux program"]),
        ("table.csv", b"PK\x03\x04\x14\x00\x00\x00", ["named .csv", "ZIP archive"]),
        ("letter.docx", pdf_bytes(HELLO), ["named .docx", "PDF document"]),
        ("old.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), ["old-style Office"]),
        ("data.json", b"hello: world", ["named .json", "does not contain JSON"]),
        ("page.html", b"Dear diary, today was fine.", ["named .html", "does not look like HTML"]),
        ("noise.txt", bytes(range(256)) * 4, ["named .txt", "binary"]),
    ],
)
def test_detect_type_refuses_content_that_does_not_match_the_name(name, head, words):
    with pytest.raises(ExtractionError) as caught:
        detect_type(name, head)
    assert caught.value.reason == "mismatch"
    assert isinstance(caught.value, InvalidInput)
    for word in words:
        assert word in str(caught.value)


def test_detect_type_refuses_a_zip_without_a_word_document(tmp_path):
    path = tmp_path / "fake.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "not a word document")
    with pytest.raises(ExtractionError, match=r"word/document\.xml is missing"):
        detect_type("fake.docx", path.read_bytes())
    with pytest.raises(ExtractionError, match="ZIP container is damaged"):
        detect_type("broken.docx", b"PK\x03\x04" + bytes(100))  # the whole (tiny) file


@pytest.mark.parametrize("name", ["", ".", "..", "../x.txt", "a/b.txt", "a\\b.txt", "a\x00.txt"])
def test_detect_type_refuses_unsafe_names(name):
    with pytest.raises(ExtractionError, match="file name is not allowed") as caught:
        detect_type(name, b"hello")
    assert caught.value.reason == "unsafe_name"


def test_detect_type_refuses_unsupported_types_and_empty_files():
    with pytest.raises(ExtractionError, match=r"\.exe are not supported") as caught:
        detect_type("setup.exe", b"MZ\x90\x00")
    assert "txt, md, html, pdf, docx, csv, json" in str(caught.value)
    with pytest.raises(ExtractionError, match="without an extension"):
        detect_type("Makefile", b"all:\n")
    with pytest.raises(ExtractionError, match="empty") as caught:
        detect_type("empty.txt", b"")
    assert caught.value.reason == "empty"


# --- text formats -------------------------------------------------------------------------


def test_txt_paragraphs_with_bom_and_cp1252_fallback(tmp_path):
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfFirst line\nsame paragraph\r\n\r\nSecond.\n")
    result = extract(path, "txt")
    assert result.kind == "txt"
    assert result.pages is None
    assert result.sections == [
        Section("First line\nsame paragraph", "paragraph"),
        Section("Second.", "paragraph"),
    ]
    legacy = write(tmp_path / "b.txt", "Caf\u00e9 na\u00efve \u2014 ok".encode("cp1252"))
    assert extract(legacy, "txt").sections == [Section("Café naïve — ok", "paragraph")]


def test_binary_content_is_refused_even_past_detection(tmp_path):
    garbage = write(tmp_path / "noise.txt", bytes(range(1, 256)) * 64)  # no NUL, not text
    error = refused(garbage, "txt")
    assert error.reason == "binary"
    assert "does not contain readable text" in str(error)
    with_nul = write(tmp_path / "nul.txt", b"text\x00more text")
    assert refused(with_nul, "txt").reason == "binary"


def test_markdown_headings_paragraphs_lists_and_code(tmp_path):
    text = (
        "# Title\n\nIntro paragraph\ncontinues here.\n\n"
        "## Section *two* ##\n\n- item one\n- item two\n\n"
        "```python\n# not a heading\n\nx = 1\n```\n\n"
        "###### Deep\n####### too deep\n\nSetext\n===\n\n---\n\nEnd."
    )
    result = extract(write(tmp_path / "a.md", text), "md")
    assert [(s.kind, s.level, s.text) for s in result.sections] == [
        ("heading", 1, "Title"),
        ("paragraph", 0, "Intro paragraph\ncontinues here."),
        ("heading", 2, "Section *two*"),
        ("paragraph", 0, "- item one\n- item two"),
        ("paragraph", 0, "# not a heading\n\nx = 1"),
        ("heading", 6, "Deep"),
        ("paragraph", 0, "####### too deep"),
        ("heading", 1, "Setext"),
        ("paragraph", 0, "End."),
    ]


def test_html_drops_scripts_and_keeps_structure(tmp_path):
    html = """<!DOCTYPE html><html><head><title>T</title>
    <style>body { color: red }</style><script>var secret = "SCRIPT-CANARY";</script></head>
    <body><h1>Main &amp; only</h1><p>First   para
    with <b>bold</b> text.</p><noscript>NOSCRIPT-CANARY</noscript>
    <template><p>TEMPLATE-CANARY</p></template>
    <h3>Details</h3><ul><li>one</li><li>two &lt;3</li></ul>
    <table><tr><th>Name</th><th>Age</th></tr><tr><td>Ada</td><td>36</td></tr></table>
    <pre>  indented
      code</pre><div>line<br>break</div><script>alert(1)</script></body></html>"""
    result = extract(write(tmp_path / "a.html", html), "html")
    assert [(s.kind, s.level, s.text) for s in result.sections] == [
        ("heading", 1, "Main & only"),
        ("paragraph", 0, "First para with bold text."),
        ("heading", 3, "Details"),
        ("paragraph", 0, "one"),
        ("paragraph", 0, "two <3"),
        ("paragraph", 0, "Name | Age"),
        ("paragraph", 0, "Ada | 36"),
        ("paragraph", 0, "indented\n      code"),
        ("paragraph", 0, "line\nbreak"),
    ]
    everything = " ".join(s.text for s in result.sections)
    assert "CANARY" not in everything
    assert "alert" not in everything


def test_csv_rows_render_with_their_column_names(tmp_path):
    rows = ["name;city;note"] + [f"P{i};Oslo;{'' if i % 2 else 'x'}" for i in range(25)]
    result = extract(write(tmp_path / "a.csv", "\n".join(rows) + "\n"), "csv")
    assert len(result.sections) == 2
    first = result.sections[0].text.split("\n")
    assert len(first) == 20
    assert first[0] == "name: P0; city: Oslo; note: x"
    assert first[1] == "name: P1; city: Oslo"
    assert result.sections[1].text.split("\n")[-1] == "name: P24; city: Oslo; note: x"


def test_json_renders_paths(tmp_path):
    data = {"user": {"name": "Ada", "langs": ["en", "fr"], "admin": True}, "n": None, "e": {}}
    result = extract(write(tmp_path / "a.json", json.dumps(data)), "json")
    assert result.sections == [
        Section(
            "user.name: Ada\nuser.langs[0]: en\nuser.langs[1]: fr\nuser.admin: true\n"
            "n: null\ne: {}",
            "paragraph",
        )
    ]


@pytest.mark.parametrize("depth", [150, 100_000])
def test_deeply_nested_json_is_refused(tmp_path, depth):
    path = write(tmp_path / "deep.json", "[" * depth + "1" + "]" * depth)
    error = refused(path, "json")
    assert error.reason == "too_deep"
    assert "nested more than 100 levels" in str(error)


def test_too_much_text_is_refused(tmp_path):
    path = write(tmp_path / "big.txt", b"lorem ipsum " * (21 * 1024 * 1024 // 12))
    error = refused(path, "txt")
    assert error.reason == "too_much_text"
    assert "too much text" in str(error)


# --- DOCX ---------------------------------------------------------------------------------


def test_docx_paragraphs_headings_tabs_and_breaks(tmp_path):
    body = (
        para("Annual report", "Title")
        + para("Overview", "Heading1")
        + '<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>'
        "<w:r><w:t>Revenue</w:t><w:tab/><w:t>up</w:t><w:br/><w:t>next line</w:t></w:r>"
        "<w:r><w:delText>deleted</w:delText><w:instrText>PAGE</w:instrText></w:r></w:p>"
        + para("Einzelheiten", "berschrift2")
        + para("")
    )
    styles = (
        f'<?xml version="1.0" encoding="UTF-8"?><w:styles xmlns:w="{W}">'
        '<w:style w:type="paragraph" w:styleId="berschrift2"><w:name w:val="heading 2"/>'
        "</w:style></w:styles>"
    ).encode()
    path = docx(
        tmp_path / "a.docx",
        {"word/document.xml": document_xml(body), "word/styles.xml": styles},
    )
    result = extract(path, "docx")
    assert result.kind == "docx"
    assert result.sections == [
        Section("Annual report", "heading", 1),
        Section("Overview", "heading", 1),
        Section("Revenue\tup\nnext line", "paragraph"),
        Section("Einzelheiten", "heading", 2),
    ]


def test_zip_bomb_docx_is_refused_before_parsing(tmp_path):
    path = docx(tmp_path / "bomb.docx", {"word/document.xml": document_xml(para("hi"))})
    zeros = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf,
        zf.open("word/media/zeros.bin", "w") as member,
    ):
        for _ in range(150):  # 150 MB of zeros, about 150 KB compressed
            member.write(zeros)
    assert path.stat().st_size < 1024 * 1024
    before = {child.pid for child in psutil.Process().children()}
    started = time.monotonic()
    error = refused(path, "docx")
    assert time.monotonic() - started < 2
    assert error.reason == "zip_bomb"
    assert "possible zip bomb" in str(error)
    assert {child.pid for child in psutil.Process().children()} == before


def test_docx_member_compressed_too_well_is_refused(tmp_path):
    members = {"word/document.xml": document_xml(para("hi")), "word/x.bin": bytes(2 << 20)}
    error = refused(docx(tmp_path / "ratio.docx", members), "docx")
    assert error.reason == "zip_bomb"
    assert "200:1" in str(error)


@pytest.mark.parametrize("evil", ["../evil.txt", "word/../../evil.txt", "/etc/evil", "C:\\evil"])
def test_zip_slip_member_names_are_refused(tmp_path, evil):
    members = {"word/document.xml": document_xml(para("hi")), evil: b"owned"}
    error = refused(docx(tmp_path / "slip.docx", members), "docx")
    assert error.reason == "unsafe_path"
    assert "unsafe path" in str(error)


def test_docx_with_too_many_entries_is_refused(tmp_path):
    members = {f"word/media/{i}.txt": b"x" for i in range(1000)}
    members["word/document.xml"] = document_xml(para("hi"))
    error = refused(docx(tmp_path / "many.docx", members), "docx")
    assert error.reason == "zip_bomb"
    assert "more than 1000" in str(error)


def test_zip_without_word_document_is_refused(tmp_path):
    path = docx(tmp_path / "other.docx", {"xl/workbook.xml": b"<workbook/>"})
    error = refused(path, "docx")
    assert error.reason == "not_docx"
    assert "word/document.xml is missing" in str(error)


BILLION_LAUGHS = (
    '<!DOCTYPE w:document [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    + "]>"
)
XXE = '<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize(
    ("prolog", "text"), [(BILLION_LAUGHS, "&lol9;"), (XXE, "&xxe;")], ids=["laughs", "xxe"]
)
def test_docx_with_entity_declarations_is_refused(tmp_path, prolog, text):
    members = {"word/document.xml": document_xml(para(text), prolog=prolog)}
    error = refused(docx(tmp_path / "xxe.docx", members), "docx")
    assert error.reason == "doctype"
    assert "DOCTYPE" in str(error)
    assert "root:" not in str(error)


def test_docx_in_utf16_is_refused(tmp_path):
    xml = document_xml(para("hi")).decode().replace("UTF-8", "UTF-16").encode("utf-16")
    error = refused(docx(tmp_path / "u16.docx", {"word/document.xml": xml}), "docx")
    assert error.reason == "encoding"


# --- PDF ----------------------------------------------------------------------------------


def test_pdf_text_and_page_numbers(tmp_path):
    second = b"BT /F1 12 Tf 72 720 Td (Second page) Tj ET"
    path = write(tmp_path / "a.pdf", pdf_bytes(HELLO, second))
    result = extract(path, "pdf")
    assert result.kind == "pdf"
    assert result.pages == 2
    assert result.sections == [
        Section("Hello canary", "paragraph", page=1),
        Section("Second page", "paragraph", page=2),
    ]


def test_encrypted_pdf_is_refused(tmp_path):
    source = write(tmp_path / "plain.pdf", pdf_bytes(HELLO))
    writer = PdfWriter(clone_from=PdfReader(source))
    writer.encrypt("secret", algorithm="RC4-128")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as out:
        writer.write(out)
    error = refused(path, "pdf")
    assert error.reason == "encrypted"
    assert "encrypted PDF" in str(error)


def test_pdf_without_text_and_broken_pdf(tmp_path):
    blank = write(tmp_path / "blank.pdf", pdf_bytes(b"0 0 m 100 100 l S"))
    error = refused(blank, "pdf")
    assert error.reason == "no_text"
    assert "scanned images" in str(error)
    broken = write(tmp_path / "broken.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 20)
    assert refused(broken, "pdf").reason == "malformed"


def test_pdf_bomb_is_stopped_in_the_child(tmp_path):
    # Five pages whose content streams each inflate to 60 MB of zeros: 300 MB from a 300 KB
    # file. Each stream stays under pypdf's own 75 MB cap, so the child's RLIMIT_AS is
    # what stops it (a single 300 MB stream is refused by pypdf itself: "malformed").
    compressor = zlib.compressobj(6)
    zeros = bytes(1 << 20)
    stream = b"".join(compressor.compress(zeros) for _ in range(60)) + compressor.flush()
    path = write(tmp_path / "bomb.pdf", pdf_bytes(*[stream] * 5, flate=True))
    assert path.stat().st_size < 1024 * 1024
    rss_before = psutil.Process().memory_info().rss
    started = time.monotonic()
    error = refused(path, "pdf", timeout=10, memory_mb=256)
    assert time.monotonic() - started < 12
    assert error.reason in {"memory", "malformed"}  # our limit, or a future pypdf cap
    assert "more memory than allowed" in str(error) or "could not be read" in str(error)
    assert psutil.Process().memory_info().rss - rss_before < 50 * 1024 * 1024
    assert extract(write(tmp_path / "ok.pdf", pdf_bytes(HELLO)), "pdf").sections  # still fine


# --- limits -------------------------------------------------------------------------------


def test_memory_limit_stops_the_child_not_the_parent(tmp_path):
    path = write(tmp_path / "wide.json", "[" + "1," * 9_000_000 + "1]")  # ~18 MB, 72 MB list
    rss_before = psutil.Process().memory_info().rss
    error = refused(path, "json", memory_mb=100)
    assert error.reason == "memory"
    assert "more memory than allowed (100 MB)" in str(error)
    assert psutil.Process().memory_info().rss - rss_before < 50 * 1024 * 1024


def test_timeout_kills_and_reaps_the_child(tmp_path):
    path = write(tmp_path / "a.pdf", pdf_bytes(HELLO))
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    error = refused(path, "pdf", timeout=0.01)
    assert error.reason == "timeout"
    assert "took too long" in str(error)
    left = [child for child in me.children(recursive=True) if child.pid not in before]
    assert left == []  # killed and reaped: no zombie


def test_empty_file_is_refused(tmp_path):
    assert refused(write(tmp_path / "e.txt", b""), "txt").reason == "empty"


def test_error_messages_carry_no_document_text(tmp_path):
    path = write(tmp_path / "deep.json", '{"CANARY-SECRET": ' * 200 + "1" + "}" * 200)
    error = refused(path, "json")
    assert error.reason == "too_deep"
    assert "CANARY" not in str(error)
