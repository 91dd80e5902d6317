"""The embedding model: a BERT-style encoder, batched, truncated to its limit, L2-normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.inference import models
from appliance.inference.loader import load_llama


class EmbeddingEngine:
    """A BERT-style embedding model loaded in its own llama.cpp context."""

    def __init__(
        self,
        model: models.Model,
        path: Path,
        *,
        n_threads: int,
        max_tokens: int,
        batch: int,
        extra_bufts: bool = False,
    ) -> None:
        import llama_cpp

        self.model = model
        self._llama_cpp = llama_cpp
        size = max(batch, max_tokens)
        # n_ubatch must equal n_batch: llama.cpp aborts on encoder models otherwise.
        self.llama = load_llama(
            path,
            extra_bufts=extra_bufts,
            embedding=True,
            n_ctx=size,
            n_batch=size,
            n_ubatch=size,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=0,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )
        self.max_tokens = min(max_tokens, model.context_length or max_tokens)
        self.batch = size
        self.dim = self.llama.n_embd()
        self._n_seq_max = self.llama.context_params.n_seq_max

    def tokenize(self, text: str) -> list[int]:
        """Model tokens of ``text`` ([CLS] … [SEP]), cut to the model's limit."""
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(tokens) > self.max_tokens:
            tokens = [*tokens[: self.max_tokens - 1], tokens[-1]]
        return tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text without [CLS]/[SEP] (uses only the vocabulary: thread-safe)."""
        return [
            len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            for text in texts
        ]

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Normalised embeddings of ``texts`` and the number of tokens evaluated."""
        llama = self.llama
        out: list[np.ndarray] = []
        total = 0
        group: list[list[int]] = []
        used = 0
        for tokens in (self.tokenize(text) for text in texts):
            if group and (used + len(tokens) > self.batch or len(group) >= self._n_seq_max):
                out.extend(self._decode(group))
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
            total += len(tokens)
        if group:
            out.extend(self._decode(group))
        llama._ctx.kv_cache_clear()
        return [vector.tolist() for vector in out], total

    def _decode(self, group: list[list[int]]) -> list[np.ndarray]:
        llama = self.llama
        llama._batch.reset()
        for seq_id, tokens in enumerate(group):
            llama._batch.add_sequence(tokens, seq_id, True)
        llama._ctx.kv_cache_clear()
        llama._ctx.decode(llama._batch)
        vectors = []
        for seq_id in range(len(group)):
            pointer = self._llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, seq_id)
            vector = np.ctypeslib.as_array(pointer, shape=(self.dim,)).astype(np.float32)
            norm = float(np.linalg.norm(vector))
            vectors.append(vector / norm if norm > 0 else vector)
        llama._batch.reset()
        return vectors
