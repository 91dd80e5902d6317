"""Voice samples: content checks, storage, excerpts, the voice block and deletion."""

import io
import os
import zipfile

import pytest
from persona_support import NOW, docx_bytes, new_settings, open_database

from appliance.accounts import service as accounts
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.knowledge import extract
from appliance.knowledge.sandbox import Sandbox
from appliance.persona import service as persona
from appliance.persona import voice
from appliance.tokens import estimate_tokens

LETTER = """Dear customers,

Thank you for another wonderful year at the bakery. We could not have done it without you.
Every loaf we bake starts before sunrise, and we love that you notice the difference.

- Please order celebration cakes at least three days ahead, so we can do them properly.
- 12 | 34 | 56 | 78 | 90 | 12 | 34 | 56 | 78 | 90 | 12 | 34 | 56 | 78 | 90 | 12 | 34.

From January we will open an hour later on Mondays. The extra hour lets our team rest,
and it means fresher bread for you on the busiest morning of the week.

Read our full opening hours at https://example.com/hours whenever you need them, please.
Warm wishes,
The Bakery Team
Copyright 2026 Example Bakery. All rights reserved, now and for the rest of time itself.
"""
ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">]>'
    b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    b"<w:body><w:p><w:r><w:t>&a;&a;&a;</w:t></w:r></w:p></w:body></w:document>"
)


@pytest.fixture
def owner(settings, db):
    user, account = accounts.create_user(db, "owner@example.com", NOW, role="owner")
    return user, account


def add(db, settings, account, name, content, role="owner"):
    return voice.add_sample(db, settings, account.id, role, name, content, NOW)


def files_of(settings, account):
    folder = settings.paths.files / account.id / "voice"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def count(db, table):
    return db.execute(f"select count(*) from {table}").fetchone()[0]  # noqa: S608


def test_text_sample_is_stored_under_a_server_name_with_excerpts(settings, db, owner):
    _, account = owner
    sample = add(db, settings, account, "../../etc/Letter 2026.txt", LETTER.encode())
    assert sample.filename == "Letter 2026.txt"  # metadata only, no path parts
    assert sample.kind == "txt" and sample.size == len(LETTER.encode())
    path = voice.sample_path(settings, account.id, sample.id)
    assert path.read_bytes() == LETTER.encode()
    assert files_of(settings, account) == [sample.id]
    excerpts = [e.text for e in voice.excerpts(db, account.id)]
    assert 1 <= len(excerpts) <= voice.EXCERPTS_PER_SAMPLE
    assert any(e.startswith("Thank you for another wonderful year") for e in excerpts)
    for text in excerpts:
        assert voice.EXCERPT_MIN <= len(text) <= voice.EXCERPT_MAX
        assert "http" not in text and "Copyright" not in text and "|" not in text


def test_markdown_sample(settings, db, owner):
    _, account = owner
    text = (
        "# Style notes\n\n"
        "* We always write in short, friendly sentences and avoid jargon wherever we can.\n"
        "* When something goes wrong, we say sorry first and then explain what happens next.\n"
    )
    sample = add(db, settings, account, "notes.MD", text.encode("utf-8-sig"))
    assert sample.kind == "md"
    assert [e.text for e in voice.excerpts(db, account.id)] == [
        "We always write in short, friendly sentences and avoid jargon wherever we can.",
        "When something goes wrong, we say sorry first and then explain what happens next.",
    ]


def test_docx_text_is_extracted_from_runs_and_paragraphs(settings, db, owner):
    _, account = owner
    document = docx_bytes(
        [
            "Hello there,",
            "Our new sourdough is finally here, and we think it is the best loaf we have made.",
            "Come by on Saturday for a free tasting &amp; a chat with the bakers themselves.",
        ]
    )
    sample = add(db, settings, account, "Newsletter.docx", document)
    assert sample.kind == "docx"
    path = voice.sample_path(settings, account.id, sample.id)
    assert voice.read_sample(settings, path, "Newsletter.docx") == (
        "docx",
        "Hello there,\n\n"
        "Our new sourdough is finally here, and we think it is the best loaf we have made.\n\n"
        "Come by on Saturday for a free tasting & a chat with the bakers themselves.",
    )
    assert len(voice.excerpts(db, account.id)) == 2


def test_docx_runs_tabs_and_breaks(settings, tmp_path):
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    xml = (
        f'<w:document xmlns:w="{w}"><w:body>'
        "<w:p><w:r><w:t>One </w:t></w:r><w:r><w:t>run</w:t><w:tab/><w:t>tab</w:t>"
        "<w:br/><w:t>line</w:t></w:r></w:p><w:p/><w:p><w:r><w:t>Two</w:t></w:r></w:p>"
        "</w:body></w:document>"
    ).encode()
    path = tmp_path / "sample.docx"
    path.write_bytes(docx_bytes(document=xml))
    assert voice.read_sample(settings, path, "sample.docx") == ("docx", "One run\ttab\nline\n\nTwo")


def refused(db, settings, account, name, content, match):
    with pytest.raises(InvalidInput, match=match):
        add(db, settings, account, name, content)
    assert count(db, "voice_samples") == 0
    assert count(db, "voice_excerpts") == 0
    assert files_of(settings, account) == []


def test_zip_bomb_is_refused(settings, db, owner):
    _, account = owner
    bomb = docx_bytes(
        ["A perfectly normal sentence that would make a fine excerpt."],
        extra={"word/media/padding.bin": b"\0" * (21 * 1024 * 1024)},
    )
    assert len(bomb) < 100_000  # tiny on the wire, 21 MB unpacked
    refused(db, settings, account, "bomb.docx", bomb, "compressed more than 200:1")


def test_too_many_docx_parts_are_refused(settings, db, owner):
    _, account = owner
    parts = {f"word/part{i}.xml": b"<x/>" for i in range(extract.MAX_ZIP_ENTRIES)}
    refused(db, settings, account, "parts.docx", docx_bytes(["Hi."], extra=parts), "too many")


@pytest.mark.parametrize("member", ["../evil", "word/../../evil.xml", "/etc/evil"])
def test_unsafe_member_names_are_refused(settings, db, owner, member):
    _, account = owner
    bad = docx_bytes(
        ["Fine text in a fine document, nothing to see here at all."], extra={member: b"x"}
    )
    refused(db, settings, account, "evil.docx", bad, "unsafe path")


def test_docx_that_is_not_a_word_document_is_refused(settings, db, owner):
    _, account = owner
    refused(db, settings, account, "plain.docx", b"Just text pretending.", "looks like plain text")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hi")
    refused(db, settings, account, "other.docx", buffer.getvalue(), "word/document.xml")
    refused(db, settings, account, "entity.docx", docx_bytes(document=ENTITY), "entity declaration")
    broken = docx_bytes(document=b"<w:document")
    refused(db, settings, account, "broken.docx", broken, "could not be read")


def test_a_docx_sample_is_read_in_the_extraction_sandbox(settings, db, owner):
    """.docx samples go through the knowledge base's sandboxed worker, with its refusals;
    text is read in this process, as for the knowledge base."""
    _, account = owner
    sandbox = Sandbox.for_thread(settings.knowledge.extract_memory_mb)
    sandbox.stop()
    add(db, settings, account, "letter.txt", LETTER.encode())
    assert sandbox.pid is None
    add(db, settings, account, "letter.docx", docx_bytes(LETTER.split("\n\n")))
    assert sandbox.pid not in (None, os.getpid()) and sandbox.jobs == 1
    with pytest.raises(extract.ExtractionError) as refusal:
        add(db, settings, account, "entity.docx", docx_bytes(document=ENTITY))
    assert refusal.value.reason == "doctype" and sandbox.jobs == 2
    assert len(files_of(settings, account)) == 2


def test_windows_1252_text_is_read_as_the_knowledge_base_reads_it(settings, db, owner):
    _, account = owner
    text = "Our café serves crème brûlée every Friday, made by hand in the morning. " * 2
    sample = add(db, settings, account, "cp1252.txt", text.encode("cp1252"))
    path = voice.sample_path(settings, account.id, sample.id)
    assert voice.read_sample(settings, path, "cp1252.txt") == ("txt", text.strip())


def test_text_with_nul_bytes_is_refused(settings, db, owner):
    _, account = owner
    refused(db, settings, account, "nul.txt", b"Some text\x00with a NUL byte.", "not text")


def test_png_renamed_to_txt_is_refused(settings, db, owner):
    _, account = owner
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02"
    refused(db, settings, account, "picture.txt", png, "looks like a PNG image")


def test_other_types_and_bad_text_are_refused(settings, db, owner):
    _, account = owner
    refused(db, settings, account, "paper.pdf", b"%PDF-1.7 ...", r"\.txt, \.md or \.docx")
    refused(db, settings, account, "empty.md", b"", "empty")
    refused(db, settings, account, "blank.md", b"   \n\n  ", "No text")


def test_over_size_is_refused(tmp_path):
    settings = new_settings(tmp_path / "data", **{"persona.max_sample_bytes": 2000})
    db = open_database(settings)
    _, account = accounts.create_user(db, "o@example.com", NOW, role="owner")
    with pytest.raises(voice.TooLarge):
        add(db, settings, account, "long.txt", b"Long enough text. " * 200)
    assert count(db, "voice_samples") == 0
    assert files_of(settings, account) == []
    add(db, settings, account, "ok.txt", b"Short text. " * 100)


def test_too_many_samples_and_duplicates_are_refused(tmp_path):
    settings = new_settings(tmp_path / "data", **{"persona.max_samples": 2})
    db = open_database(settings)
    _, account = accounts.create_user(db, "o@example.com", NOW, role="owner")
    add(db, settings, account, "a.txt", b"First sample of our writing.")
    with pytest.raises(Conflict, match="already"):
        add(db, settings, account, "a-again.txt", b"First sample of our writing.")
    add(db, settings, account, "b.txt", b"Second sample of our writing.")
    with pytest.raises(Conflict, match="at most 2"):
        add(db, settings, account, "c.txt", b"Third sample of our writing.")
    # A full account refuses a .docx before the extraction sandbox does any work.
    sandbox = Sandbox.for_thread(settings.knowledge.extract_memory_mb)
    jobs = sandbox.jobs
    with pytest.raises(Conflict, match="at most 2"):
        add(db, settings, account, "d.docx", docx_bytes(["Fourth sample of our writing."]))
    assert sandbox.jobs == jobs
    assert count(db, "voice_samples") == 2
    assert len(files_of(settings, account)) == 2


def test_members_cannot_upload_list_or_delete(settings, db, owner):
    _, account = owner
    sample = add(db, settings, account, "a.txt", LETTER.encode())
    with pytest.raises(NotFound):
        add(db, settings, account, "b.txt", b"Member text.", role="member")
    with pytest.raises(NotFound):
        voice.samples(db, account.id, "member")
    with pytest.raises(NotFound):
        voice.delete_sample(db, settings, account.id, "member", sample.id)
    assert count(db, "voice_samples") == 1


def test_delete_removes_rows_excerpts_and_file(settings, db, owner):
    _, account = owner
    keep = add(db, settings, account, "keep.txt", LETTER.encode())
    gone = add(db, settings, account, "gone.txt", LETTER.replace("Dear", "Hello").encode())
    _, other = accounts.create_user(db, "other@example.com", NOW, role="owner")
    with pytest.raises(NotFound):
        voice.delete_sample(db, settings, other.id, "owner", gone.id)
    assert voice.sample_path(settings, account.id, gone.id).exists()

    voice.delete_sample(db, settings, account.id, "owner", gone.id)
    assert [s.id for s in voice.samples(db, account.id, "owner")] == [keep.id]
    assert (
        db.execute("select count(*) from voice_excerpts where sample_id = ?", [gone.id]).fetchone()[
            0
        ]
        == 0
    )
    assert {e.sample_id for e in voice.excerpts(db, account.id)} == {keep.id}
    assert not voice.sample_path(settings, account.id, gone.id).exists()
    assert files_of(settings, account) == [keep.id]
    with pytest.raises(NotFound):
        voice.delete_sample(db, settings, account.id, "owner", gone.id)


def test_excerpts_skip_boilerplate_and_spread_across_the_document():
    sentences = [
        f"Paragraph {chr(65 + i)} says something useful about how we write to customers every day."
        for i in range(12)
    ]
    text = "\n\n".join(
        [
            "Hi!",
            "Unsubscribe from these emails at any time by replying to us now.",
            *sentences,
            "Call +1 555 0100 / +1 555 0101 / +1 555 0102 / 0103 / 04.",
        ]
    )
    chosen = voice.select_excerpts(text)
    assert chosen == voice.select_excerpts(text)  # deterministic
    assert [c.split()[1] for c in chosen] == ["A", "E", "I"]  # one from each third
    assert voice.select_excerpts("Too short.") == []


def test_voice_block_respects_the_token_budget(tmp_path):
    settings = new_settings(tmp_path / "data", **{"persona.voice_token_budget": 90})
    db = open_database(settings)
    _, account = accounts.create_user(db, "o@example.com", NOW, role="owner")
    add(db, settings, account, "a.txt", LETTER.encode())
    add(
        db,
        settings,
        account,
        "b.md",
        b"We keep every reply short, kind and clear, and we sign with our names.",
    )
    block = voice.voice_block(db, settings, account.id)
    assert block.startswith("Examples of the team's writing style:\n- ")
    assert block.endswith(voice.FOOTER)
    assert estimate_tokens(block) <= 90
    excerpts = voice.excerpts(db, account.id)
    assert 0 < sum(e.text in block for e in excerpts) < len(excerpts)

    roomy = voice.voice_block(
        db, settings.replace(**{"persona.voice_token_budget": 4000}), account.id
    )
    assert all(e.text in roomy for e in excerpts)
    # Samples take turns: b's only excerpt comes right after a's first one.
    first_a, second_a = [e.text for e in excerpts if e.text.startswith(("Thank", "Please"))][:2]
    assert roomy.index(first_a) < roomy.index("We keep every reply") < roomy.index(second_a)
    none = settings.replace(**{"persona.voice_token_budget": 0})
    assert voice.voice_block(db, none, account.id) == ""


def test_prompt_for_account_has_the_active_prompt_and_the_excerpts(settings, db, owner):
    user, account = owner
    assert voice.voice_block(db, settings, account.id) == ""
    persona.save_edit(db, account.id, "owner", user.id, "You are Crumb, the bakery's helper.", NOW)
    add(db, settings, account, "letter.txt", LETTER.encode())
    full = persona.prompt_for_account(db, settings, account.id, NOW)
    assert full.startswith("You are Crumb, the bakery's helper.\n\nExamples of the team's writing")
    assert voice.excerpts(db, account.id)[0].text in full
    assert estimate_tokens(full.split("\n\n", 1)[1]) <= settings.persona.voice_token_budget
