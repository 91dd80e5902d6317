"""The llama.cpp engine: the chat model, the embedding model and the reranker, loaded
once per process.

Only the inference service calls ``load_engine``. The chat model is always the batched
engine (appliance/inference/batching.py): ``inference.parallel`` sequence slots, 1 for
one answer at a time. Every method runs on the scheduler's threads (one for chat, one for
embeddings and reranking), never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import Settings
from appliance.errors import ConfigError, InvalidInput, NotFound
from appliance.inference import models
from appliance.inference.base import EngineInfo, gpu_layers, gpu_offload_supported, physical_cores
from appliance.inference.batching import BatchedChatEngine
from appliance.inference.embedding import EmbeddingEngine
from appliance.inference.loader import route_llama_log
from appliance.inference.rerank import RerankEngine


@dataclass
class Engine:
    chat: BatchedChatEngine
    embedding: EmbeddingEngine | None
    info: EngineInfo
    rerank: RerankEngine | None = None


def load_engine(
    settings: Settings, *, with_embeddings: bool = True, extra_bufts: bool | None = None
) -> Engine:
    """Load the configured chat (and embedding) model.

    Args:
        extra_bufts: let llama.cpp repack weights for its CPU kernels. None: only when
            ``inference.cpu_repack`` is "on" (the service decides "auto" with a probe,
            appliance/inference/selftest.py).

    Raises:
        ConfigError: a model is missing or the settings do not fit this build.
    """
    route_llama_log()  # before the first call into llama.cpp (gpu_offload_supported)
    cfg = settings.inference
    registry = models.load_registry(settings)
    chat_model, chat_path = _configured(registry, "chat", cfg.chat_model)
    if not chat_path.exists():
        raise ConfigError(f"model file {chat_path} is missing: reinstall the model")
    if cfg.kv_cache_type != "f16" and not cfg.flash_attn:
        raise ConfigError("inference.kv_cache_type other than f16 needs inference.flash_attn")
    if extra_bufts is None:
        extra_bufts = cfg.cpu_repack == "on"
    gpu = gpu_offload_supported()
    n_gpu_layers = gpu_layers(cfg.n_gpu_layers)
    n_threads = cfg.n_threads or physical_cores()
    n_ctx = cfg.n_ctx or min(chat_model.context_length or 8192, 8192)
    chat = BatchedChatEngine(
        chat_model,
        chat_path,
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        flash_attn=cfg.flash_attn,
        kv_cache_type=cfg.kv_cache_type,
        parallel=cfg.parallel,
        prompt_chunk_tokens=cfg.prompt_chunk_tokens,
        prefix_cache_entries=cfg.prefix_cache_entries,
        extra_bufts=extra_bufts,
    )
    encoder = {
        "n_threads": n_threads,
        "batch": cfg.embedding_batch_tokens,
        "extra_bufts": extra_bufts,
    }
    embedding = rerank = None
    if with_embeddings:
        model, path = _configured(registry, "embedding", cfg.embedding_model)
        embedding = EmbeddingEngine(model, path, max_tokens=cfg.embedding_max_tokens, **encoder)
    if with_embeddings and cfg.rerank_model:
        rerank = RerankEngine(*_configured(registry, "reranker", cfg.rerank_model), **encoder)
    layers = chat.layers + 1  # llama.cpp counts the output layer too
    offloaded = layers if n_gpu_layers < 0 else min(n_gpu_layers, layers)
    info = EngineInfo(
        chat_model=chat_model.id,
        embedding_model=embedding.model.id if embedding else None,
        n_ctx=chat.n_ctx,
        gpu_offload_supported=gpu,
        gpu_layers=offloaded,
        model_layers=layers,
        n_threads=n_threads,
        parallel=cfg.parallel,
        cpu_repack=extra_bufts,
        rerank_model=rerank.model.id if rerank else None,
    )
    return Engine(chat=chat, embedding=embedding, info=info, rerank=rerank)


def _configured(
    registry: models.Registry, kind: models.Kind, model_id: str
) -> tuple[models.Model, Path]:
    """The model a setting names, and its file; a ConfigError when there is none."""
    try:
        model = registry.resolve(kind, model_id)
    except (InvalidInput, NotFound) as exc:
        raise ConfigError(str(exc)) from None
    return model, registry.path(model)
