"""The reranker: a BERT cross-encoder converted to GGUF, llama.cpp's rank pooling,
``POST /v1/rerank`` on the real inference service, and search re-ordered by it.

The cross-encoder is built here (tests/inference/rerank_support.py): small, random weights
on the real vocabulary, checked against its NumPy forward pass. Its scores mean nothing
about relevance, so the search tests ask what the reranker thinks first and then check
that the search follows it, not the fusion.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import discard, make_settings, manage_client, start_inference
from rerank_support import make_cross_encoder, reference_score

from appliance import vault
from appliance.cli import initialise
from appliance.inference import models, selftest
from appliance.inference.convert import convert_minilm
from appliance.inference.rerank import RerankEngine

pytestmark = pytest.mark.inference

QUERY = "how long should the espresso extraction take"
PASSAGES = [
    "Espresso extraction: how long should the extraction take? The espresso extraction "
    "question comes up often.",
    "Pull the shot for 25 to 30 seconds; stop when the stream turns blond.",
    "A burr grinder gives an even grind, like table salt.",
    "Descale the machine every month with citric acid.",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cross-encoder")
    weights = make_cross_encoder(root / "checkpoint")
    return convert_minilm(root / "checkpoint", root / "tiny-ce.gguf", "tiny-ce"), weights


@pytest.fixture(scope="module")
def engine(cross_encoder) -> RerankEngine:
    path, _ = cross_encoder
    model = models.Model(
        "tiny-ce", path.name, "reranker", models.gguf_context_length(path), "", "", "", ""
    )
    return RerankEngine(model, path, n_threads=1, batch=256)


@pytest.fixture(scope="module")
def rerank_service(tmp_path_factory, models_dir, cross_encoder):
    """An inference service with the bundled models and the cross-encoder as reranker."""
    settings = make_settings(tmp_path_factory.mktemp("rerank-data"))
    initialise(settings)
    registry = models.load_registry(settings)
    shared = models.load_registry(make_settings(models_dir.parent))
    for model in shared.models.values():
        (registry.directory / model.file).symlink_to(shared.path(model))
        models.register(
            registry, model.id, registry.directory / model.file, kind=model.kind,
            license=model.license, source=model.source,
        )  # fmt: skip
    # This machine's self-test verdicts for those models: no second repacking probe.
    verdicts = models_dir / selftest.VERDICTS_FILE
    if verdicts.exists():
        shutil.copyfile(verdicts, registry.directory / selftest.VERDICTS_FILE)
    (registry.directory / "tiny-ce.gguf").symlink_to(cross_encoder[0])
    models.register(
        registry, "tiny-ce", registry.directory / "tiny-ce.gguf", kind="reranker",
        license="test", source="made by the test",
    )  # fmt: skip
    service = start_inference(
        settings,
        APPLIANCE_INFERENCE__RERANK_MODEL="tiny-ce",
    )
    yield service
    discard(service.process)


def post_rerank(service, body: dict, key: str | None = None) -> httpx.Response:
    key = key or vault.read_secret(service.settings, "inference_key")
    return httpx.post(
        f"{service.url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {key}"}
    )


def test_rank_pooling_computes_the_cross_encoder(engine, cross_encoder):
    _, weights = cross_encoder
    scores, tokens = engine.score(QUERY, PASSAGES)
    assert tokens == sum(len(engine.pair(QUERY, p)) for p in PASSAGES)
    expected = [reference_score(weights, engine.pair(QUERY, p)) for p in PASSAGES]
    spread = max(expected) - min(expected)
    assert spread > 0.1  # the passages really score differently
    for got, want in zip(scores, expected, strict=True):
        assert abs(got - want) < 0.02 * spread + 1e-3
    # A passage scores the same alone as in a batch with others.
    alone, _ = engine.score(QUERY, PASSAGES[2:3])
    assert abs(alone[0] - scores[2]) < 1e-3


def test_long_pairs_are_cut_to_the_limit(engine):
    tokens = engine.pair("word " * 400, "passage " * 2000)
    assert len(tokens) == engine.max_tokens
    assert tokens[-1] == engine.pair("a", "b")[-1]  # still ends with [SEP]


def test_rerank_endpoint_shape(rerank_service, engine):
    response = post_rerank(rerank_service, {"query": QUERY, "documents": PASSAGES, "top_n": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-ce" and body["object"] == "list"
    expected, tokens = engine.score(QUERY, PASSAGES)
    best = sorted(range(4), key=lambda i: expected[i], reverse=True)[:2]
    assert [r["index"] for r in body["results"]] == best
    for result in body["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-3
        assert "document" not in result
    assert body["usage"]["prompt_tokens"] == tokens
    full = post_rerank(
        rerank_service, {"query": QUERY, "documents": PASSAGES, "return_documents": True}
    ).json()
    assert len(full["results"]) == 4
    assert all(PASSAGES[r["index"]] == r["document"]["text"] for r in full["results"])
    health = httpx.get(f"{rerank_service.url}/healthz").json()
    assert health["rerank_model"] == "tiny-ce"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"documents": ["a"]}, "'query'"),
        ({"query": "q", "documents": []}, "'documents'"),
        ({"query": "q", "documents": ["a", 3]}, "documents[1]"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "'top_n'"),
        ({"query": "q", "documents": ["a"], "model": "other"}, "not served here"),
        ({"query": "q", "documents": ["a"], "temperature": 1}, "Unsupported parameter"),
    ],
)
def test_bad_rerank_requests_are_400(rerank_service, body, words):
    response = post_rerank(rerank_service, body)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_rerank_needs_the_inference_key(rerank_service):
    response = post_rerank(rerank_service, {"query": "q", "documents": ["a"]}, key="wrong")
    assert response.status_code == 401


def test_a_service_without_reranker_answers_501(inference_service, inference_key):
    response = post_rerank(inference_service, {"query": "q", "documents": ["a"]}, inference_key)
    assert response.status_code == 501
    assert "No reranker" in response.json()["error"]["message"]


def linked(settings, service, **extra):
    (settings.paths.secrets / "inference_key").write_text(
        (service.settings.paths.secrets / "inference_key").read_text()
    )
    lines = ["[inference]", f'url = "{service.url}"', "[knowledge]"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    (settings.paths.data_dir / "appliance.toml").write_text("\n".join(lines) + "\n")
    return make_settings(settings.paths.data_dir)


def test_search_follows_the_reranker_not_the_fusion(settings, db, clock, rerank_service, engine):
    scores, _ = engine.score(QUERY, PASSAGES)
    reranker_best = max(range(4), key=scores.__getitem__)
    assert reranker_best != 0, "the crafted case needs the reranker to disagree with BM25"
    with manage_client(linked(settings, rerank_service), db, clock, "a@example.com", "A") as a:
        for n, passage in enumerate(PASSAGES):
            response = a.post(
                "/api/documents", files={"file": (f"p{n}.txt", io.BytesIO(passage.encode()))}
            )
            assert response.status_code == 202
        result = a.get("/api/search", params={"q": QUERY, "k": 4}).json()
    assert result["hits"][0]["text"] == PASSAGES[reranker_best]
    assert [hit["text"] for hit in result["hits"]] == [
        PASSAGES[i] for i in sorted(range(4), key=scores.__getitem__, reverse=True)
    ]
    off = linked(settings, rerank_service, rerank="false")
    with manage_client(off, db, clock, "a@example.com", "A") as a:
        fused = a.get("/api/search", params={"q": QUERY, "k": 4}).json()
    # Without the reranker the fusion puts the passage that repeats the query first:
    # both legs rank it first.
    assert fused["hits"][0]["text"] == PASSAGES[0]
    assert fused["hits"][0]["legs"] == ["bm25", "vector"]


def test_reranked_search_keeps_to_the_account(settings, db, clock, rerank_service):
    settings = linked(settings, rerank_service)
    with (
        manage_client(settings, db, clock, "a@example.com", "A") as a,
        manage_client(settings, db, clock, "b@example.org", "B") as b,
    ):
        for n, passage in enumerate(PASSAGES):
            a.post("/api/documents", files={"file": (f"p{n}.txt", io.BytesIO(passage.encode()))})
        b.post("/api/documents", files={"file": ("b.txt", io.BytesIO(b"Espresso notes of B."))})
        hits = b.get("/api/search", params={"q": QUERY, "k": 10}).json()["hits"]
    assert [hit["text"] for hit in hits] == ["Espresso notes of B."]
