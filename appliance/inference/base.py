"""What the inference engine and its callers share: request and event types, the chat
model's template and tokenizer, stop-string scanning and how llama.cpp is loaded.

``engine.py`` assembles the engine from these and ``batching.py``'s chat engine; both
import this module and not each other.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, InvalidInput
from appliance.inference import models, structured
from appliance.inference.loader import Tokenizer, load_llama

log = logging.getLogger(__name__)

KV_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}  # ggml type ids


class ContextOverflow(InvalidInput):
    """The prompt does not fit the model's context window."""


@dataclass(frozen=True)
class Delta:
    """A piece of generated text, with its tokens' log probabilities if they were asked for
    (OpenAI's ``logprobs.content`` entries)."""

    text: str
    logprobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Finish:
    """The end of a generation, with exact token counts."""

    reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class EngineInfo:
    """What the service reports at startup, in /healthz and to doctor."""

    chat_model: str
    embedding_model: str | None
    n_ctx: int
    gpu_offload_supported: bool
    gpu_layers: int
    model_layers: int
    n_threads: int
    parallel: int = 1
    cpu_repack: bool = False
    rerank_model: str | None = None

    @property
    def device(self) -> str:
        if self.gpu_layers <= 0:
            return "cpu"
        return "gpu" if self.gpu_layers >= self.model_layers else "gpu (partial)"


def cpuinfo() -> list[dict[str, str]]:
    """``/proc/cpuinfo``: one dict per logical CPU (none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            blocks = handle.read().split("\n\n")
    except OSError:
        return []
    return [
        dict(map(str.strip, line.partition(":")[::2]) for line in b.splitlines()) for b in blocks
    ]


def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp decodes fastest with one thread each."""
    cores = {(cpu.get("physical id"), cpu["core id"]) for cpu in cpuinfo() if "core id" in cpu}
    return len(cores) or max(1, (os.cpu_count() or 2) // 2)


def gpu_offload_supported() -> bool:
    """Whether llama.cpp has a GPU to offload to: a GPU backend built in and a device found."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_backends() -> list[str]:
    """The GPU backends llama.cpp was built with, whether or not they found a device: the
    backends its system info lists ("CUDA : ARCHS = 900 | ... | CPU : SSE3 = 1 | ..."),
    but the CPU. It lists those that report their build features (CPU, CUDA and HIP,
    Metal): a Vulkan or SYCL build that finds no GPU still reads as one without."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    names = [part.split(" : ")[0].strip() for part in info.split("|") if " : " in part]
    return [name for name in names if name != "CPU"]


def gpu_layers(requested: int) -> int:
    """``inference.n_gpu_layers`` for this build: -1 (all) or 0 without GPU support."""
    gpu = gpu_offload_supported()
    n_gpu_layers = (-1 if gpu else 0) if requested < 0 else requested
    if n_gpu_layers and not gpu:
        log.warning("inference.n_gpu_layers=%d but llama.cpp has no GPU support", n_gpu_layers)
        n_gpu_layers = 0
    return n_gpu_layers


def chat_llama(path: Path, *, n_ctx: int, n_threads: int, kv_cache_type: str, **options: Any):
    """The chat model loaded with the engine's settings, as a ``llama_cpp.Llama``
    (``options``: ``n_gpu_layers``, ``flash_attn`` and ``extra_bufts``)."""
    return load_llama(
        path,
        n_ctx=n_ctx,
        n_batch=min(512, n_ctx),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        type_k=KV_TYPES[kv_cache_type],
        type_v=KV_TYPES[kv_cache_type],
        seed=random.randrange(2**31),  # noqa: S311 - sampling, not security
        verbose=False,
        extra_bufts=options.pop("extra_bufts", False),
        **options,
    )


class ChatModel(Tokenizer):
    """A loaded chat model's chat template and tokenizer (the engine's base class)."""

    def __init__(self, model: models.Model, llama, n_ctx: int) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model = model
        self.llama = llama
        self.n_ctx = n_ctx
        metadata = llama.metadata
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"model '{model.id}' has no chat template in its GGUF metadata")
        eos_id = llama.token_eos()
        bos_id = llama.token_bos()
        piece = llama._model.token_get_text
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=piece(eos_id) if eos_id >= 0 else "",
            bos_token=piece(bos_id) if bos_id >= 0 else "",
            stop_token_ids=[eos_id],
        )
        self.knows_tools = "tools" in template
        self.layers = int(metadata.get(f"{metadata.get('general.architecture')}.block_count", 0))

    def _check_fits(self, tokens: list[int]) -> None:
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(
                f"The conversation is {len(tokens)} tokens long; this model's context window "
                f"is {self.n_ctx} tokens. Shorten it or start a new one."
            )

    def prompt_tokens(
        self, messages: list[dict[str, Any]] | str, tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], tuple[str, ...]]:
        """The chat template applied (with ``tools``, OpenAI's shape) and tokenized, and the
        template's own stop strings. A template that does not render tools gets them, and
        earlier tool calls, as text (appliance/inference/structured.py).

        A string instead of messages is a raw prompt (legacy completions): no template.

        Raises:
            ContextOverflow: the prompt leaves no room for an answer.
        """
        if isinstance(messages, str):
            tokens = self.llama.tokenize(messages.encode("utf-8"), add_bos=True, special=False)
            self._check_fits(tokens)
            return tokens, ()
        if not self.knows_tools:
            messages = structured.plain_messages(messages, tools)
            tools = None
        try:
            formatted = self._formatter(messages=messages, tools=tools)
        except ValueError as exc:  # the template's raise_exception: it refuses these roles
            raise InvalidInput(f"The model's chat template refused the messages: {exc}") from None
        tokens = self.llama.tokenize(
            formatted.prompt.encode("utf-8"),
            add_bos=not getattr(formatted, "added_special", False),
            special=True,
        )
        self._check_fits(tokens)
        stop = formatted.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return tokens, stops
