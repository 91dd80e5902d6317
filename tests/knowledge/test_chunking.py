"""Chunking: structure, sizes in tokens, overlap."""

import itertools

from appliance.knowledge.chunking import chunk_sections, split_sentences
from appliance.knowledge.extract import Section
from appliance.tokens import estimate_tokens


def words(texts):
    return [len(text.split()) for text in texts]


def test_headings_start_chunks_and_form_the_path():
    sections = [
        Section("Guide", "heading", 1),
        Section("Intro text here.", "paragraph"),
        Section("Setup", "heading", 2),
        Section("Install it. Then run it.", "paragraph", page=3),
        Section("Other", "heading", 1),
        Section("Last words.", "paragraph"),
    ]
    chunks = chunk_sections(sections, words, chunk_tokens=50, overlap_tokens=0)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Guide", "Intro text here."),
        ("Guide > Setup", "Install it. Then run it."),
        ("Other", "Last words."),
    ]
    assert chunks[1].page == 3
    assert [c.position for c in chunks] == [0, 1, 2]


def test_chunks_respect_the_token_limit_and_overlap():
    sentences = [f"Sentence number {i} has exactly seven words." for i in range(40)]
    chunks = chunk_sections(
        [Section(" ".join(sentences), "paragraph")], words, chunk_tokens=30, overlap_tokens=8
    )
    assert len(chunks) > 5
    assert all(c.tokens <= 30 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after.text.split(". ")[0] in before.text  # the last sentence is repeated
    covered = " ".join(c.text for c in chunks)
    assert all(s in covered for s in sentences)


def test_a_sentence_longer_than_a_chunk_is_split():
    long = " ".join(f"w{i}" for i in range(500))
    chunks = chunk_sections([Section(long, "paragraph")], words, chunk_tokens=100, overlap_tokens=0)
    assert len(chunks) >= 5
    assert all(c.tokens <= 100 for c in chunks)
    assert " ".join(c.text for c in chunks) == long


def test_sentence_split_and_estimate():
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert split_sentences("e.g. this stays") == ["e.g. this stays"]
    assert estimate_tokens("abcd" * 10) == 10
