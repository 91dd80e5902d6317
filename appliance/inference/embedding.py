"""The embedding model: a BERT-style encoder, batched, truncated to its limit, L2-normalised."""

from __future__ import annotations

import numpy as np

from appliance.inference.encoder import Encoder


class EmbeddingEngine(Encoder):
    """A BERT-style embedding model (mean pooling) loaded in its own llama.cpp context."""

    pooling = "mean"

    def tokenize(self, text: str) -> list[int]:
        """Model tokens of ``text`` ([CLS] … [SEP]), cut to the model's limit."""
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(tokens) > self.max_tokens:
            tokens = [*tokens[: self.max_tokens - 1], tokens[-1]]
        return tokens

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Normalised embeddings of ``texts`` and the number of tokens evaluated."""
        vectors, total = self.encode(map(self.tokenize, texts), self.dim)
        return [(vector / (np.linalg.norm(vector) or 1.0)).tolist() for vector in vectors], total
