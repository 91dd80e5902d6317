"""The llama.cpp engine: the chat model and the embedding model, loaded once per process.

Only the inference service calls ``load_engine``. Every method here runs on the
scheduler's threads (one for chat, one for embeddings), never on the event loop.
"""

from __future__ import annotations

import codecs
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ConfigError, InvalidInput, NotFound
from appliance.inference import models, sampling, structured
from appliance.inference.embedding import EmbeddingEngine
from appliance.inference.loader import load_llama
from appliance.inference.rerank import RerankEngine
from appliance.inference.sampling import GenerationParams

log = logging.getLogger(__name__)

KV_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}  # ggml type ids
#: Shorter sequences are cheaper to re-evaluate than to save and restore.
MIN_CACHED_TOKENS = 64


class ContextOverflow(InvalidInput):
    """The prompt does not fit the model's context window."""


@dataclass(frozen=True)
class Delta:
    """A piece of generated text."""

    text: str


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
    embedding_dim: int | None = None
    engine: str = "sequential"
    parallel: int = 1
    cpu_repack: bool = False
    rerank_model: str | None = None

    @property
    def device(self) -> str:
        if self.gpu_layers <= 0:
            return "cpu"
        return "gpu" if self.gpu_layers >= self.model_layers else "gpu (partial)"


def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp decodes fastest with one thread each."""
    try:
        cores = set()
        physical = core = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    cores.add((physical, core))
                    physical = core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_layers(requested: int) -> int:
    """``inference.n_gpu_layers`` for this build: -1 (all) or 0 without GPU support."""
    gpu = gpu_offload_supported()
    n_gpu_layers = (-1 if gpu else 0) if requested < 0 else requested
    if n_gpu_layers and not gpu:
        log.warning("inference.n_gpu_layers=%d but llama.cpp has no GPU support", n_gpu_layers)
        n_gpu_layers = 0
    return n_gpu_layers


def chat_llama(
    path: Path,
    *,
    n_ctx: int,
    n_threads: int,
    n_gpu_layers: int,
    flash_attn: bool,
    kv_cache_type: str,
    extra_bufts: bool = False,
):
    """The chat model loaded with the engine's settings, as a ``llama_cpp.Llama``."""
    return load_llama(
        path,
        extra_bufts=extra_bufts,
        n_ctx=n_ctx,
        n_batch=min(512, n_ctx),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_gpu_layers=n_gpu_layers,
        flash_attn=flash_attn,
        type_k=KV_TYPES[kv_cache_type],
        type_v=KV_TYPES[kv_cache_type],
        seed=random.randrange(2**31),  # noqa: S311 - sampling, not security
        verbose=False,
    )


class ChatModel:
    """A loaded chat model's chat template and tokenizer, shared by both engines."""

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

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text in the chat model's vocabulary (read-only: thread-safe)."""
        return [
            len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            for text in texts
        ]

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


class ChatEngine(ChatModel):
    """One chat model in one llama.cpp context, generating one sequence at a time.

    The KV cache of the last sequence stays in the context, and states of recent
    sequences are kept in a RAM cache, so the next turn of a conversation only evaluates
    the new tokens. ``inference.engine = "sequential"`` selects it; the batched engine
    (appliance/inference/batching.py) serves several sequences at once.
    """

    def __init__(
        self,
        model: models.Model,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int,
        flash_attn: bool,
        kv_cache_type: str,
        prefix_cache_bytes: int,
        extra_bufts: bool = False,
    ) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        llama = chat_llama(
            path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=flash_attn,
            kv_cache_type=kv_cache_type,
            extra_bufts=extra_bufts,
        )
        super().__init__(model, llama, llama.n_ctx())
        self._cache = llama_cpp.LlamaRAMCache(capacity_bytes=prefix_cache_bytes)
        self.prefix_cache_enabled = prefix_cache_bytes > 0

    def generate(
        self,
        messages: list[dict[str, Any]] | str,
        params: GenerationParams,
        cancelled: Callable[[], bool] = lambda: False,
        tools: list[dict[str, Any]] | None = None,
    ) -> Iterator[Delta | Finish]:
        """Generate an answer, yielding text as it is produced and a final ``Finish``."""
        llama = self.llama
        tokens, template_stops = self.prompt_tokens(messages, tools)
        cached = self._restore_prefix(tokens)
        limit = min(params.max_tokens, self.n_ctx - len(tokens))
        llama.set_seed(params.seed if params.seed is not None else random.randrange(2**31))  # noqa: S311
        grammar = None
        if params.grammar:
            grammar = self._llama_cpp.LlamaGrammar.from_string(params.grammar, verbose=False)
        stops = tuple(s for s in (*params.stop, *template_stops) if s)
        text = sampling.StopScanner(stops)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        completion = 0
        reason = "length"
        vocab = llama._model.vocab
        for token in llama.generate(
            tokens,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.0,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            logits_processor=sampling.logits_processor(params.logit_bias),
            grammar=grammar,
        ):
            if self._llama_cpp.llama_vocab_is_eog(vocab, token):
                reason = "stop"
                break
            completion += 1
            ready, hit = text.feed(decoder.decode(llama.detokenize([token])))
            if ready:
                yield Delta(ready)
            if hit:
                reason = "stop"
                break
            if completion >= limit:
                break
            if cancelled():
                reason = "cancelled"
                break
        if reason != "stop" or not text.hit:
            tail = text.flush(decoder.decode(b"", final=True))
            if tail:
                yield Delta(tail)
        # The caller has the answer before the state is saved for the next turn.
        yield Finish(reason, len(tokens), completion, cached)
        self._remember()

    def _restore_prefix(self, tokens: list[int]) -> int:
        """Load the cached state sharing the longest prefix with ``tokens``; returns its length."""
        llama = self.llama
        live = llama.longest_token_prefix(llama._input_ids.tolist(), tokens)
        if not self.prefix_cache_enabled:
            return live
        try:
            state = self._cache[tokens]
        except KeyError:
            return live
        stored = llama.longest_token_prefix(state.input_ids.tolist(), tokens)
        if stored > live:
            llama.load_state(state)
            return stored
        return live

    def _remember(self) -> None:
        llama = self.llama
        if self.prefix_cache_enabled and llama.n_tokens >= MIN_CACHED_TOKENS:
            self._cache[llama._input_ids.tolist()] = self._snapshot()

    def _snapshot(self):
        """``Llama.save_state`` without its copy of the logits buffer.

        ``save_state`` copies ``n_batch x n_vocab`` floats (100 MB for a 49k vocabulary)
        that the cache does not count and ``load_state`` does not need: a restored state
        is re-evaluated from its last token before sampling. One row keeps the shape.
        """
        import ctypes

        llama = self.llama
        lib = self._llama_cpp
        size = lib.llama_state_get_size(llama._ctx.ctx)
        buffer = (ctypes.c_uint8 * int(size))()
        written = int(lib.llama_state_get_data(llama._ctx.ctx, buffer, size))
        return lib.llama.LlamaState(
            input_ids=llama.input_ids.copy(),
            scores=llama.scores[:1].copy(),
            n_tokens=llama.n_tokens,
            llama_state=ctypes.string_at(buffer, written),
            llama_state_size=written,
            seed=llama._seed,
        )


@dataclass
class Engine:
    chat: ChatModel
    embedding: EmbeddingEngine | None
    info: EngineInfo
    extra: dict = field(default_factory=dict)
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
    cfg = settings.inference
    registry = models.load_registry(settings)
    try:
        chat_model = registry.resolve("chat", cfg.chat_model)
    except (InvalidInput, NotFound) as exc:
        raise ConfigError(str(exc)) from None
    chat_path = registry.path(chat_model)
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
    chat: ChatModel
    if cfg.engine == "batched":
        from appliance.inference.batching import BatchedChatEngine

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
    else:
        chat = ChatEngine(
            chat_model,
            chat_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=cfg.flash_attn,
            kv_cache_type=cfg.kv_cache_type,
            prefix_cache_bytes=cfg.prefix_cache_mb * 1024 * 1024,
            extra_bufts=extra_bufts,
        )
    embedding = None
    if with_embeddings:
        try:
            embed_model = registry.resolve("embedding", cfg.embedding_model)
        except (InvalidInput, NotFound) as exc:
            raise ConfigError(str(exc)) from None
        embedding = EmbeddingEngine(
            embed_model,
            registry.path(embed_model),
            n_threads=n_threads,
            max_tokens=cfg.embedding_max_tokens,
            batch=cfg.embedding_batch_tokens,
            extra_bufts=extra_bufts,
        )
    rerank = None
    if with_embeddings and cfg.rerank_model:
        try:
            rerank_model = registry.resolve("reranker", cfg.rerank_model)
        except (InvalidInput, NotFound) as exc:
            raise ConfigError(str(exc)) from None
        rerank = RerankEngine(
            rerank_model,
            registry.path(rerank_model),
            n_threads=n_threads,
            batch=cfg.embedding_batch_tokens,
            extra_bufts=extra_bufts,
        )
    layers = chat.layers + 1  # llama.cpp counts the output layer too
    if n_gpu_layers == 0:
        offloaded = 0
    else:
        offloaded = layers if n_gpu_layers < 0 else min(n_gpu_layers, layers)
    info = EngineInfo(
        chat_model=chat_model.id,
        embedding_model=embedding.model.id if embedding else None,
        n_ctx=chat.n_ctx,
        gpu_offload_supported=gpu,
        gpu_layers=offloaded,
        model_layers=layers,
        n_threads=n_threads,
        embedding_dim=embedding.dim if embedding else None,
        engine=cfg.engine,
        parallel=cfg.parallel if cfg.engine == "batched" else 1,
        cpu_repack=extra_bufts,
        rerank_model=rerank.model.id if rerank else None,
    )
    return Engine(chat=chat, embedding=embedding, info=info, rerank=rerank)
