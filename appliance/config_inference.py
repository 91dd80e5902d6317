"""The inference service's settings (the ``[inference]`` section): the models, the
context and slots, threads, queues and limits. Declared here to keep ``config.py`` short;
``Settings.inference`` is one of these."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config_loader import setting


@dataclass(frozen=True)
class InferenceSettings:
    host: str = "127.0.0.1"
    """Address the inference service listens on (loopback)."""
    port: int = setting(8001, min=1, max=65535)
    """TCP port of the inference service."""
    url: str = ""
    """Base URL the web and worker use to reach inference (any OpenAI-compatible server). Empty:
    http://HOST:PORT of the inference service above."""
    chat_model: str = ""
    """Id of the chat model to load (see `appliance models list`). Empty: the registry's default
    chat model."""
    embedding_model: str = ""
    """Id of the embedding model to load. Empty: the registry's default embedding model."""
    rerank_model: str = ""
    """Id of a cross-encoder reranker to load for POST /v1/rerank (a GGUF installed with
    `appliance models pull --kind reranker`). Empty: none, and searches keep the fused order."""
    n_ctx: int = setting(0, min=0, max=1_048_576)
    """Context window of the chat model in tokens. 0: the model's trained context, capped at
    8192."""
    n_gpu_layers: int = setting(-1, min=-1)
    """Layers offloaded to the GPU: -1 means all of them on a CUDA build and none on a CPU-only
    build; 0 forces the CPU."""
    n_threads: int = setting(0, min=0, max=512)
    """CPU threads for llama.cpp. 0: the number of physical cores."""
    cpu_repack: str = setting("auto", choices=("off", "auto", "on"))
    """Let llama.cpp repack model weights for its fastest CPU kernels (extra buffer types:
    AVX2/AVX-512 repacking, Intel AMX). 'off' never; 'on' always; 'auto' runs the models once
    with repacking in a child process and uses it only if that child survives, remembered per
    machine, llama.cpp build and model (a crash there costs nothing; see docs/operations.md, "CPU
    features")."""
    flash_attn: bool = False
    """Use flash attention (GPU builds)."""
    kv_cache_type: str = setting("f16", choices=("f16", "q8_0", "q4_0"))
    """Data type of the KV cache. q8_0 halves its memory at a small quality cost."""
    max_tokens: int = setting(1024, min=1, max=1_048_576)
    """Largest max_tokens a request may ask for."""
    max_choices: int = setting(4, min=1, max=16)
    """Largest 'n' (choices per chat completion) a request may ask for; each choice is generated
    and metered."""
    embedding_max_tokens: int = setting(256, min=8, max=8192)
    """Texts are cut to this many tokens of the embedding model before embedding
    (all-MiniLM-L6-v2 was trained on 256)."""
    embedding_batch_tokens: int = setting(256, min=64, max=8192)
    """Tokens evaluated in one embedding batch (several texts at once). On a CPU, small batches
    are faster: the encoder attends over the whole batch (see docs/benchmarks.md)."""
    queue_size: int = setting(32, min=1)
    """Requests waiting for the model beyond which new ones get 503 with Retry-After."""
    per_account_queue: int = setting(8, min=1)
    """Requests one account may have waiting or running at once; more wait for one of these
    places (inference.account_wait_seconds), then get 429."""
    account_wait_seconds: float = setting(60.0, min=0)
    """How long a request beyond its account's inference.per_account_queue waits for a place
    before it gets 429 with Retry-After (0: refused at once). Other accounts' requests do not
    wait behind it."""
    request_timeout_seconds: float = setting(300.0, min=1)
    """How long the web and worker wait for one inference request before giving up."""
    parallel: int = setting(8, min=1, max=128)
    """Conversations the chat engine decodes at once (sequence slots; 1 answers one at a time).
    They share the KV cache of inference.n_ctx tokens; more wait in the queue."""
    prompt_chunk_tokens: int = setting(0, min=0, max=8192)
    """Prompt tokens the chat engine evaluates per step next to running answers' tokens, so a
    long prompt does not stall them. 0: 512 where the model runs on a GPU, 128 on a CPU (where
    a step with 128 prompt tokens takes ~0.25 s on 2 cores). With no answer running, prompts
    go 512 tokens per step."""
    prefix_cache_entries: int = setting(8, min=0, max=64)
    """Prompts (with their answers) whose KV cache the chat engine keeps in host memory for
    reuse by later requests that start the same way (together at most inference.n_ctx tokens),
    least recently used dropped first. 0 turns prefix reuse off."""
