"""The reranker: a cross-encoder scored by llama.cpp's rank pooling, and ``POST /v1/rerank``.

A cross-encoder reads the query and one passage together (``[CLS] query [SEP] passage
[SEP]``) and gives one relevance score: the classification head on the [CLS] token, which
is what llama.cpp's ``LLAMA_POOLING_TYPE_RANK`` computes. The request and response follow
the shape llama-server, Jina and Cohere share: ``{"query", "documents", "top_n"}`` in,
``{"results": [{"index", "relevance_score"}]}`` out, best first. Scores are the head's raw
output (llama-server's convention): higher is more relevant; they are not probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from appliance.inference import models
from appliance.inference import openai_schema as schema
from appliance.inference.chat_api import check_model
from appliance.inference.encoder import Encoder

MAX_DOCUMENTS = 1000
#: Pairs are cut to this many tokens (ms-marco and bge cross-encoders were trained on 512).
MAX_PAIR_TOKENS = 512
Text = Annotated[str, msgspec.Meta(max_length=schema.MAX_TEXT_CHARS)]


class RerankRequest(msgspec.Struct):
    query: Text
    documents: Annotated[list[Text], msgspec.Meta(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, msgspec.Meta(ge=1)] | None = None
    return_documents: bool = False
    model: str | None = None


def parse_rerank(body: Any, model_id: str) -> RerankRequest:
    """Validate a rerank request; raises InvalidParam naming the bad field."""
    if isinstance(body, dict) and (
        unknown := sorted(set(body) - set(RerankRequest.__struct_fields__))
    ):
        raise schema.InvalidParam(f"Unsupported parameter: '{unknown[0]}'.", unknown[0])
    request = schema.decode(body, RerankRequest)
    check_model(request.model, model_id)
    if not request.query.strip():
        raise schema.InvalidParam("'query' must be a non-empty string.", "query")
    top_n = min(request.top_n or len(request.documents), len(request.documents))
    return msgspec.structs.replace(request, top_n=top_n)


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

    pooling = "rank"

    def __init__(self, model: models.Model, path: Path, **options: Any) -> None:
        super().__init__(model, path, max_tokens=MAX_PAIR_TOKENS, **options)

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
