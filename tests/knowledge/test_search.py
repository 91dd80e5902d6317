"""Search without the models: common-word pruning of the BM25 leg and neighbour merging.

Chunks go in through the store's own write path on a real SQLite file; the vectors are
4-dimensional placeholders the BM25-only searches here never read.
"""

from __future__ import annotations

import pytest
from conftest import stored_document

from appliance import db as db_module
from appliance.accounts import service as accounts
from appliance.knowledge import search
from appliance.knowledge.store import Chunk, KnowledgeStore

FILLER = "The pump in the basement was checked by the caretaker."


def add_document(db, account_id: str, doc_id: str, texts: list[str], headings=None) -> None:
    headings = headings or [""] * len(texts)
    pairs = enumerate(zip(texts, headings, strict=True))
    chunks = [Chunk(i, text, None, heading, 10) for i, (text, heading) in pairs]
    stored_document(db, account_id, doc_id, chunks, [[1.0, 0.0, 0.0, 0.0]] * len(chunks))


@pytest.fixture
def account(db, clock):
    return accounts.create_user(db, "a@example.com", clock(), account_name="A")[1].id


@pytest.fixture
def big_index(db, account):
    """600 chunks that all say 'pump', one of which also holds a rare word."""
    texts = [f"{FILLER} Entry {n}." for n in range(599)]
    texts.append(f"{FILLER} The zebracanary valve was replaced.")
    add_document(db, account, "doc_many", texts)
    return db


def test_common_words_are_left_out_and_rare_ones_kept(big_index):
    store = KnowledgeStore(big_index)
    query = search.bm25_query(store, "pump basement zebracanary valve", 0.05)
    assert query == '"zebracanary" OR "valve"'
    # Inflected forms count by their stem: "pumps" is as common as "pump".
    assert search.bm25_query(store, "pumps zebracanary", 0.05) == '"zebracanary"'


def test_a_query_of_common_words_keeps_its_rarest_ones(big_index):
    store = KnowledgeStore(big_index)
    assert search.bm25_query(store, "pump basement caretaker", 0.05).count('"') == 6
    assert search.bm25_query(store, "the pump", 0.05) in ('"the" OR "pump"', '"pump" OR "the"')


def test_a_word_the_index_has_never_seen_is_kept(big_index):
    store = KnowledgeStore(big_index)
    assert search.bm25_query(store, "pump unheardofword", 0.05) == '"unheardofword"'


def test_small_indexes_keep_every_word(db, account):
    add_document(db, account, "doc_small", [FILLER, "Another note about the pump."])
    store = KnowledgeStore(db)
    assert search.bm25_query(store, "the pump", 0.05) == search.fts_query("the pump")


def test_the_rare_word_finds_its_chunk_among_common_ones(big_index, account):
    result = search.search(big_index, None, account, "the pump in the basement zebracanary", 3)
    assert "zebracanary" in result.hits[0].text
    assert result.legs == ["bm25"]


def test_neighbouring_hits_become_one_passage(db, account):
    first = "Grind the beans fine. Use a burr grinder."
    second = "Use a burr grinder. Brew 18 grams of coffee for 25 seconds."
    add_document(db, account, "doc_coffee", [first, second, "Descale the machine monthly."])
    add_document(db, account, "doc_tea", ["Brew green tea for two minutes, not 25 seconds."])
    result = search.search(db, None, account, "grinder brew seconds grams", 5)
    coffee = [hit for hit in result.hits if hit.document_id == "doc_coffee"]
    assert len(coffee) == 1
    assert coffee[0].text == (
        "Grind the beans fine. Use a burr grinder. Brew 18 grams of coffee for 25 seconds."
    )
    unmerged = search.search(
        db, None, account, "grinder brew seconds grams", 5, search.Tuning(merge_neighbours=False)
    )
    assert len([hit for hit in unmerged.hits if hit.document_id == "doc_coffee"]) == 2


def test_chunks_of_other_sections_are_not_merged(db, account):
    texts = ["Use a burr grinder for espresso.", "An espresso takes 25 seconds."]
    add_document(db, account, "doc_a", texts, ["Guide > Grinding", "Guide > Brewing"])
    result = search.search(db, None, account, "espresso", 5)
    assert sorted(hit.heading for hit in result.hits) == ["Guide > Brewing", "Guide > Grinding"]


def test_the_bm25_leg_starts_from_the_full_text_index(big_index, account):
    """Not from the chunks of the account (chunks_by_account): that plan runs the FTS5
    match once per chunk, seconds at a few thousand chunks."""
    from appliance.knowledge.store import BM25_SQL

    plan = big_index.execute("explain query plan " + BM25_SQL, ['"pump"', account, 10])
    steps = [row[3] for row in plan.fetchall()]
    assert "VIRTUAL TABLE" in steps[0], steps
    assert not any("chunks_by_account" in step for step in steps), steps


class Embedder:
    """Embeds every query as the placeholder vector the chunks above hold."""

    def embed(self, texts, account_id):
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]


def test_the_vector_leg_gives_its_connection_back_to_the_pool(db, account):
    add_document(db, account, "doc_valve", ["The valve was replaced."])
    path = KnowledgeStore(db).path()
    for _ in range(6):  # more searches than the search pool has threads
        result = search.search(db, Embedder(), account, "valve")
        assert result.legs == ["bm25", "vector"]
        assert [hit.document_id for hit in result.hits] == ["doc_valve"]
    # One connection served every leg and waits in the pool, none is left on a thread.
    assert len(db_module._idle[path]) == 1
