"""Checks of the all-MiniLM-L6-v2 → GGUF converter against a pure-numpy reference BERT.

The converted file is loaded by llama.cpp (through llama-cpp-python) and its mean-pooled,
L2-normalised sentence embeddings are compared with a numpy forward pass of the original
safetensors weights fed the same token ids. The token ids themselves are checked against a
plain WordPiece tokenisation built from ``tokenizer.json``, so the vocabulary conversion is
covered as well as the weights and the graph.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from appliance.inference.convert import convert_minilm, minilm_zip_path

pytestmark = pytest.mark.inference

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "A person plays the guitar on stage.",
    "The stock market fell sharply on Tuesday.",
    "How do I reset my password?",
    "I forgot my login credentials and cannot sign in.",
    "Photosynthesis converts light energy into chemical energy.",
    "The Eiffel Tower is located in Paris, France.",
    "She sells seashells by the seashore.",
    "Quarterly revenue grew by 12% compared to last year.",
    "Please restart the server after installing the update!",
    "def add(a, b): return a + b",
    "Water boils at 100 degrees Celsius at sea level.",
    "My cat likes to sleep on the windowsill in the afternoon.",
    "Neural networks are trained with gradient descent.",
    "The meeting has been moved to 3:30 pm tomorrow.",
    "I'd like to order a large pepperoni pizza, please.",
    "Café au lait and a croissant, s'il vous plaît.",
    "UNBELIEVABLE!!! This is the BEST day ever...",
    "The mitochondria is the powerhouse of the cell.",
    "e-mail: someone@example.com, phone: +1 (555) 010-9999",
    "Rain is expected throughout the weekend in the north.",
    "She finished the marathon in under four hours.",
    "Antidisestablishmentarianism is a very long word.",
    "Children were playing football in the park.",
    "Kids played soccer outside in the park.",
    "Invoices must be paid within thirty days.",
    "Der Hund schläft auf dem Sofa.",
    "hello",
    "What is the capital of Australia? Canberra, not Sydney.",
]

#: Lowercase ASCII sentences whose llama.cpp tokenisation must equal plain WordPiece.
WORDPIECE_SENTENCES = [
    "the quick brown fox jumps over the lazy dog.",
    "how do i reset my password?",
    "photosynthesis converts light energy, mostly.",
    "antidisestablishmentarianism is a very long word",
    "e-mail me at 3:30 pm (or later)!",
    "unbelievable gpu throughput on tokenizers",
]


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, Any]:
    """The original config, vocab and weights, read straight from the package's model.zip."""
    with zipfile.ZipFile(minilm_zip_path()) as archive:
        config = json.loads(archive.read("config.json"))
        tokenizer = json.loads(archive.read("tokenizer.json"))
        weights = load_safetensors(archive.read("model.safetensors"))
    return {
        "config": config,
        "vocab": tokenizer["model"]["vocab"],
        "weights": {k: v.astype(np.float64) for k, v in weights.items()},
    }


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted model, written once for the module."""
    dest = tmp_path_factory.mktemp("gguf") / "all-minilm-l6-v2.gguf"
    assert convert_minilm(minilm_zip_path(), dest) == dest
    return dest


@pytest.fixture(scope="module")
def llm(gguf_path: Path) -> Any:
    """The converted model loaded by llama.cpp as a mean-pooling embedding model."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(
        model_path=str(gguf_path),
        embedding=True,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        n_threads=2,
        verbose=False,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    )
    yield model
    model.close()


# --- pure-numpy reference -------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as used by BERT."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _reference_embedding(checkpoint: dict[str, Any], ids: list[int]) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embedding of ``ids`` (one sequence, no padding)."""
    cfg, w = checkpoint["config"], checkpoint["weights"]
    eps = cfg["layer_norm_eps"]
    n_head = cfg["num_attention_heads"]
    d_head = cfg["hidden_size"] // n_head
    n = len(ids)

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    def norm(x: np.ndarray, prefix: str) -> np.ndarray:
        return _layer_norm(x, w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps)

    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = norm(x, "embeddings.LayerNorm")
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(n, n_head, d_head).transpose(1, 0, 2)

        q = heads(linear(x, f"{p}.attention.self.query"))
        k = heads(linear(x, f"{p}.attention.self.key"))
        v = heads(linear(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d_head)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, n_head * d_head)
        x = norm(
            x + linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
        )
        hidden = _gelu(linear(x, f"{p}.intermediate.dense"))
        x = norm(x + linear(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    pooled = x.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def _wordpiece(vocab: dict[str, int], text: str) -> list[int]:
    """Plain BERT uncased WordPiece: lowercase, split on spaces and punctuation, greedy match."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    ids = [vocab["[CLS]"]]
    for word in words:
        start, pieces = 0, []
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    start = end
                    break
            else:
                pieces = [vocab["[UNK]"]]
                break
        ids.extend(pieces)
    ids.append(vocab["[SEP]"])
    return ids


def _llama_embedding(llm: Any, text: str) -> np.ndarray:
    vec = np.asarray(llm.embed(text), dtype=np.float64)
    assert vec.ndim == 1
    return vec / np.linalg.norm(vec)


# --- tests ----------------------------------------------------------------------------------


def test_minilm_zip_path_points_at_the_packaged_archive() -> None:
    path = minilm_zip_path()
    assert path.name == "model.zip"
    assert zipfile.is_zipfile(path)


def test_conversion_is_atomic_and_reproducible_from_a_directory(
    gguf_path: Path, tmp_path: Path
) -> None:
    assert sorted(p.name for p in gguf_path.parent.iterdir()) == [gguf_path.name]
    extracted = tmp_path / "model"
    with zipfile.ZipFile(minilm_zip_path()) as archive:
        archive.extractall(extracted)
    again = convert_minilm(extracted, tmp_path / "out" / "again.gguf")
    assert again.read_bytes() == gguf_path.read_bytes()
    assert sorted(p.name for p in again.parent.iterdir()) == ["again.gguf"]


def test_converted_tokenizer_matches_wordpiece(llm: Any, checkpoint: dict[str, Any]) -> None:
    for text in WORDPIECE_SENTENCES:
        expected = _wordpiece(checkpoint["vocab"], text)
        assert llm.tokenize(text.encode(), add_bos=True) == expected, text


def test_embeddings_match_numpy_reference(llm: Any, checkpoint: dict[str, Any]) -> None:
    max_diff = 0.0
    for text in SENTENCES:
        ids = llm.tokenize(text.encode(), add_bos=True)
        assert ids[0] == 101 and ids[-1] == 102, (text, ids)
        got = _llama_embedding(llm, text)
        want = _reference_embedding(checkpoint, ids)
        assert got.shape == (384,)
        diff = float(np.abs(got - want).max())
        assert diff < 1e-3, (text, diff)
        max_diff = max(max_diff, diff)
    print(f"max abs difference vs numpy reference: {max_diff:.2e}")


def test_similar_sentences_score_higher(llm: Any) -> None:
    guitar = _llama_embedding(llm, "A man is playing a guitar.")
    similar = _llama_embedding(llm, "A person plays the guitar on stage.")
    unrelated = _llama_embedding(llm, "The stock market fell sharply on Tuesday.")
    assert float(guitar @ similar) > float(guitar @ unrelated) + 0.3
