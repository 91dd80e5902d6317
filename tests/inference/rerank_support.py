"""A small BERT cross-encoder checkpoint made here, and its score computed in NumPy.

No cross-encoder's weights can be installed offline, so the tests build one: the real
WordPiece vocabulary of the bundled all-MiniLM-L6-v2 with small random weights (seeded) in
the Hugging Face ``BertForSequenceClassification`` layout. ``reference_score`` is that
model's forward pass written out in NumPy (what transformers computes, with token type 0
throughout as llama.cpp feeds it), so llama.cpp's rank pooling can be checked against it.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from appliance.inference.convert import minilm_zip_path

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 2, 4, 128, 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_cross_encoder(directory: Path, seed: int = 7) -> dict[str, np.ndarray]:
    """Write config.json, model.safetensors and the tokenizer files; returns the weights."""
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(minilm_zip_path()) as archive:
        for name in TOKENIZER_FILES:
            (directory / name).write_bytes(archive.read(name))
        vocab = json.loads(archive.read("config.json"))["vocab_size"]
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "vocab_size": vocab,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }
    (directory / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "bert.embeddings.word_embeddings.weight": w(vocab, HIDDEN, scale=0.5),
        "bert.embeddings.position_embeddings.weight": w(POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": w(2, HIDDEN),
    }

    def dense(name: str, rows: int, cols: int, scale: float) -> None:
        weights[f"{name}.weight"] = w(rows, cols, scale=scale)
        weights[f"{name}.bias"] = w(rows)

    def layer_norm(name: str) -> None:
        weights[f"{name}.weight"] = 1 + w(HIDDEN)
        weights[f"{name}.bias"] = w(HIDDEN)

    layer_norm("bert.embeddings.LayerNorm")
    dense("bert.pooler.dense", HIDDEN, HIDDEN, 0.3)
    dense("classifier", 1, HIDDEN, 1.0)
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            dense(f"{p}attention.self.{name}", HIDDEN, HIDDEN, 0.3)
        dense(f"{p}attention.output.dense", HIDDEN, HIDDEN, 0.2)
        layer_norm(f"{p}attention.output.LayerNorm")
        dense(f"{p}intermediate.dense", FFN, HIDDEN, 0.2)
        dense(f"{p}output.dense", HIDDEN, FFN, 0.2)
        layer_norm(f"{p}output.LayerNorm")
    save_file(weights, str(directory / "model.safetensors"))
    return weights


def _norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * gain + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def reference_score(weights: dict[str, np.ndarray], tokens: list[int]) -> float:
    """``BertForSequenceClassification``'s logit for ``tokens`` (token type 0, no mask)."""
    g = {k: v.astype(np.float64) for k, v in weights.items()}
    x = (
        g["bert.embeddings.word_embeddings.weight"][tokens]
        + g["bert.embeddings.position_embeddings.weight"][: len(tokens)]
        + g["bert.embeddings.token_type_embeddings.weight"][0]
    )
    x = _norm(x, g["bert.embeddings.LayerNorm.weight"], g["bert.embeddings.LayerNorm.bias"])
    size = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."

        def dense(name: str, h: np.ndarray, p: str = p) -> np.ndarray:
            return h @ g[f"{p}{name}.weight"].T + g[f"{p}{name}.bias"]

        q, k, v = (dense(f"attention.self.{n}", x) for n in ("query", "key", "value"))
        heads = []
        for h in range(HEADS):
            cut = slice(h * size, (h + 1) * size)
            logits = q[:, cut] @ k[:, cut].T / math.sqrt(size)
            att = np.exp(logits - logits.max(-1, keepdims=True))
            heads.append((att / att.sum(-1, keepdims=True)) @ v[:, cut])
        x = _norm(
            x + dense("attention.output.dense", np.concatenate(heads, -1)),
            g[f"{p}attention.output.LayerNorm.weight"],
            g[f"{p}attention.output.LayerNorm.bias"],
        )
        ffn = dense("output.dense", _gelu(dense("intermediate.dense", x)))
        x = _norm(x + ffn, g[f"{p}output.LayerNorm.weight"], g[f"{p}output.LayerNorm.bias"])
    pooled = np.tanh(x[0] @ g["bert.pooler.dense.weight"].T + g["bert.pooler.dense.bias"])
    return float(pooled @ g["classifier.weight"][0] + g["classifier.bias"][0])
