"""The reranker: a cross-encoder scored by llama.cpp's rank pooling, and ``POST /v1/rerank``.

A cross-encoder reads the query and one passage together (``[CLS] query [SEP] passage
[SEP]``) and gives one relevance score: the classification head on the [CLS] token, which
is what llama.cpp's ``LLAMA_POOLING_TYPE_RANK`` computes. The request and response follow
the shape llama-server, Jina and Cohere share: ``{"query", "documents", "top_n"}`` in,
``{"results": [{"index", "relevance_score"}]}`` out, best first. Scores are the head's raw
output (llama-server's convention): higher is more relevant; they are not probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InvalidInput
from appliance.inference import models
from appliance.inference.encoder import Encoder

RERANK_FIELDS = {"model", "query", "documents", "top_n", "return_documents"}
MAX_DOCUMENTS = 1000
MAX_TEXT_CHARS = 1_000_000
#: Pairs are cut to this many tokens (ms-marco and bge cross-encoders were trained on 512).
MAX_PAIR_TOKENS = 512


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool


def parse_rerank(body: Any, model_id: str) -> RerankRequest:
    """Validate a rerank request; raises InvalidInput naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidInput("The request body must be a JSON object.")
    unknown = sorted(set(body) - RERANK_FIELDS)
    if unknown:
        raise InvalidInput(f"Unsupported parameter: '{unknown[0]}'.")
    requested = body.get("model")
    if requested is not None and requested != model_id:
        raise InvalidInput(f"The model '{requested}' is not served here; use '{model_id}'.")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip() or len(query) > MAX_TEXT_CHARS:
        raise InvalidInput("'query' must be a non-empty string.")
    documents = body.get("documents")
    if not isinstance(documents, list) or not 1 <= len(documents) <= MAX_DOCUMENTS:
        raise InvalidInput(f"'documents' must be a list of 1 to {MAX_DOCUMENTS} strings.")
    for index, document in enumerate(documents):
        if not isinstance(document, str) or len(document) > MAX_TEXT_CHARS:
            raise InvalidInput(f"documents[{index}] must be a string.")
    top_n = body.get("top_n")
    if top_n is None:
        top_n = len(documents)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise InvalidInput("'top_n' must be a positive integer.")
    return_documents = body.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise InvalidInput("'return_documents' must be true or false.")
    return RerankRequest(query, documents, min(top_n, len(documents)), return_documents)


def response(request: RerankRequest, scores: list[float], tokens: int, model_id: str) -> dict:
    """The results best first, cut to ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: request.top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            result["document"] = {"text": request.documents[index]}
        results.append(result)
    return {
        "object": "list",
        "model": model_id,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class RerankEngine(Encoder):
    """A cross-encoder GGUF (rank pooling): one score per (query, passage) pair, batched."""

    def __init__(
        self,
        model: models.Model,
        path: Path,
        *,
        n_threads: int,
        batch: int,
        extra_bufts: bool = False,
    ) -> None:
        max_tokens = min(MAX_PAIR_TOKENS, model.context_length or MAX_PAIR_TOKENS)
        super().__init__(
            model,
            path,
            pooling="rank",
            size=max(batch, max_tokens),
            n_threads=n_threads,
            extra_bufts=extra_bufts,
        )
        self.max_tokens = max_tokens

    def pair(self, query: str, document: str) -> list[int]:
        """``[CLS] query [SEP] document [SEP]``, the document cut to fit ``max_tokens``."""
        head = self.llama.tokenize(query.encode("utf-8"), add_bos=True, special=False)
        sep = head[-1]
        if len(head) > self.max_tokens // 2:
            head = [*head[: self.max_tokens // 2 - 1], sep]
        body = self.llama.tokenize(document.encode("utf-8"), add_bos=False, special=False)
        return [*head, *body[: self.max_tokens - len(head) - 1], sep]

    def score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """The relevance of each document to ``query``, and the tokens evaluated."""
        outputs, total = self.encode((self.pair(query, document) for document in documents), 1)
        return [float(output[0]) for output in outputs], total
