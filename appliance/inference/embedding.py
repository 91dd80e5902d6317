"""The embedding model: a BERT-style encoder, batched, truncated to its limit, L2-normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.inference import models
from appliance.inference.encoder import Encoder


class EmbeddingEngine(Encoder):
    """A BERT-style embedding model (mean pooling) loaded in its own llama.cpp context."""

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
        super().__init__(
            model,
            path,
            pooling="mean",
            size=max(batch, max_tokens),
            n_threads=n_threads,
            extra_bufts=extra_bufts,
        )
        self.max_tokens = min(max_tokens, model.context_length or max_tokens)
        self.dim = self.llama.n_embd()

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
        vectors, total = self.encode(map(self.tokenize, texts), self.dim)
        return [(vector / (np.linalg.norm(vector) or 1.0)).tolist() for vector in vectors], total
