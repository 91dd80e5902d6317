"""An encoder (BERT-style) model in its own llama.cpp context: what the embedding model and
the reranker share. Token sequences are packed into batches of at most ``batch`` tokens
(and the context's sequence count); each sequence's pooled output is read back."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from appliance.inference import models
from appliance.inference.loader import Tokenizer, load_llama


class Encoder(Tokenizer):
    """One encoder GGUF with llama.cpp's ``pooling`` (a subclass's) over each sequence of
    at most ``max_tokens`` (or the model's context length)."""

    pooling: str

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
        self.max_tokens = min(max_tokens, model.context_length or max_tokens)
        size = max(batch, self.max_tokens)
        self._llama_cpp = llama_cpp
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
            pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{self.pooling.upper()}"),
            verbose=False,
        )
        self.batch = size
        self.dim = self.llama.n_embd()
        self._n_seq_max = self.llama.context_params.n_seq_max

    def encode(self, sequences: Iterable[list[int]], width: int) -> tuple[list[np.ndarray], int]:
        """Each sequence's pooled output (``width`` floats) and the tokens evaluated."""
        out: list[np.ndarray] = []
        group: list[list[int]] = []
        used = total = 0
        for tokens in sequences:
            if group and (used + len(tokens) > self.batch or len(group) >= self._n_seq_max):
                out.extend(self._decode(group, width))
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
            total += len(tokens)
        if group:
            out.extend(self._decode(group, width))
        return out, total

    def _decode(self, group: list[list[int]], width: int) -> list[np.ndarray]:
        llama = self.llama
        llama._batch.reset()
        for seq_id, tokens in enumerate(group):
            llama._batch.add_sequence(tokens, seq_id, True)
        llama._ctx.kv_cache_clear()
        llama._ctx.decode(llama._batch)
        outputs = [
            np.ctypeslib.as_array(
                self._llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, seq_id), shape=(width,)
            ).astype(np.float32)  # a copy: the context's buffer is reused
            for seq_id in range(len(group))
        ]
        llama._batch.reset()
        llama._ctx.kv_cache_clear()
        return outputs
