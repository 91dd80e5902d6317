"""Continuous batching: many conversations decoded together in one llama.cpp context.

``BatchedChatEngine`` is the chat scheduler's ``BatchRunner``. It owns one context with
``inference.parallel`` sequence slots over one unified KV cache of ``inference.n_ctx``
cells. Every step builds one ``llama_batch`` holding the next token of each running
sequence and chunks of new prompts (within ``inference.prompt_chunk_tokens`` while any
sequence waits for its next token, ``PREFILL_TOKENS`` when none does); calls
``llama_decode`` once; and samples each sequence that has logits with its own sampler
chain (temperature, top_p, seed). With ``parallel = 1`` it answers one request at a time.

On a GPU, ``llama_decode`` returns once the step is queued on the device; llama.cpp waits
for it only when the logits are read. The engine uses that wait (``overlap``): the text of
the tokens sampled in one step (their bytes, stop strings, the events to the requests) is
handed on while the device evaluates the next, so the only Python between two evaluations
is sampling and building the batch (a request's first token still goes at once: queuing a
step would add to its time to first token). On the CPU ``llama_decode`` returns when it is done,
so the text is handed on at once (deferred, it would reach the client a step later).

Prefix reuse (``inference/prefixes.py``): a finished sequence's KV state is kept in host
memory for later prompts that start the same way, at most
``inference.prefix_cache_entries``.

KV pressure: when a step finds no room in the KV cache, the newest request of the step
*waits*: its cells are freed and it sits out (holding its slot) until a running request
ends, then evaluates again what it had (its prompt and the answer so far) and goes on where
it stopped. Only a request that cannot fit even alone fails (400, naming its tokens and the
limit). Other errors stay with their request: a prompt longer than the context or a failed
decode ends that request with a clear message; the others go on. Everything here runs on
the chat scheduler's thread.
"""

from __future__ import annotations

import codecs
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.inference import models, sampling
from appliance.inference.base import (
    ChatModel,
    Delta,
    Finish,
    chat_llama,
)
from appliance.inference.outbox import Outbox
from appliance.inference.prefixes import PrefixCache
from appliance.inference.scheduler import Failed, Job
from appliance.inference.stepmetrics import BatchMetrics

log = logging.getLogger(__name__)

#: Prompt tokens per step when no sequence waits for a token, so no answer stalls: one of
#: llama.cpp's default micro-batches (a long prompt alone prefills as fast as with
#: llama-server; 128-token chunks gave 0.8x its rate, see docs/benchmarks.md).
PREFILL_TOKENS = 512
#: The prompt chunk beside running answers when ``inference.prompt_chunk_tokens`` is 0: on a
#: CPU a 512-token step would stall them ~4x as long; a GPU evaluates it in milliseconds.
CPU_CHUNK_TOKENS = 128

TOO_LARGE = (
    "This request needs {tokens} tokens of the model's memory (its prompt and answer so "
    "far), more than the KV cache of {n_ctx} tokens can hold; ask for fewer max_tokens or "
    "shorten the conversation."
)
DECODE_FAILED = "The model failed to evaluate this request."


@dataclass(eq=False)
class _Sequence:
    """One request in a slot."""

    job: Job
    slot: int
    prompt: list[int]
    limit: int
    sampler: Any
    scanner: sampling.StopScanner
    order: int
    #: The prompt, then every sampled answer token: what the KV cache is to hold. All but
    #: the last are evaluated in prompt-sized chunks; the last alone, with its logits.
    tokens: list[int] = field(default_factory=list)
    cached: int = 0
    #: Tokens in the KV cache, in order (a prefix of ``tokens``).
    history: list[int] = field(default_factory=list)
    #: Waiting for KV room: holds no cells and sits out steps until a request ends.
    parked: bool = False
    completion: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    #: Index of this sequence's logits in the current batch, if it is to be sampled.
    out: int | None = None
    #: The grammar sampler of a constrained answer (kept out of the chain, see _sample).
    grammar: Any = None
    #: The chain is llama.cpp's greedy sampler alone: the token is the logits' argmax.
    greedy: bool = False
    #: Log probabilities (``logprobs.content`` entries) of tokens whose text is not out yet.
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_past(self) -> int:
        return len(self.history)


class BatchedChatEngine(ChatModel):
    """The chat model decoding up to ``parallel`` sequences per step (a ``BatchRunner``)."""

    def __init__(
        self,
        model: models.Model,
        path: Path,
        *,
        n_ctx: int,
        flash_attn: bool,
        parallel: int,
        prompt_chunk_tokens: int,
        prefix_cache_entries: int,
        overlap: bool | None = None,
        **load: Any,
    ) -> None:
        """``load``: ``chat_llama``'s ``n_threads``, ``n_gpu_layers`` (0: on the CPU),
        ``kv_cache_type`` and ``extra_bufts``. ``prompt_chunk_tokens`` 0: chosen by device;
        ``overlap`` None: on wherever layers are on a GPU (see the module docstring)."""
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        # The Llama object supplies the weights, tokenizer and chat template; its own
        # context is kept minimal because the batched context below does the work.
        llama = chat_llama(path, n_ctx=64, flash_attn=flash_attn, **load)
        self.slots = parallel
        on_gpu = bool(load.get("n_gpu_layers"))
        self.overlap = on_gpu if overlap is None else overlap
        self.chunk = prompt_chunk_tokens or (PREFILL_TOKENS if on_gpu else CPU_CHUNK_TOKENS)
        self.capacity = parallel + max(self.chunk, PREFILL_TOKENS)
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_ctx = n_ctx
        params.n_batch = self.capacity
        params.n_ubatch = min(self.capacity, 512)
        params.n_seq_max = parallel
        params.kv_unified = True  # one pool of cells, shared by whichever requests need them
        # With one pool, every sequence's attention spans the cells of all of them (the
        # others' masked). Flash attention skips masked cells; without it, a step costs
        # in proportion to all cells in use (measured on the CPU: one stream beside 2000
        # idle cells decodes 2x slower without it). AUTO enables it wherever the backend
        # supports it.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        )
        params.swa_full = True  # sliding-window models keep whole prefixes for reuse
        self._context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self.ctx = self._context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        # llama.cpp caps a step at n_ctx tokens (n_batch); the budgets stay within it.
        self.capacity = int(llama_cpp.llama_n_batch(self.ctx))
        self.chunk = max(1, min(self.chunk, self.capacity - parallel))
        self.prefill = min(max(self.chunk, PREFILL_TOKENS), self.capacity)
        super().__init__(model, llama, int(llama_cpp.llama_n_ctx(self.ctx)))
        self.vocab = llama._model.vocab
        # A token's bytes. A vocabulary's pieces never change, so each is read from
        # llama.cpp once (llama-cpp-python's ctypes round trip cost ~40 µs a token).
        detokenize = llama.detokenize
        self.piece = functools.cache(lambda token: detokenize([token]))
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self.metrics = BatchMetrics()
        self._running: dict[int, _Sequence] = {}
        self._free = list(range(parallel - 1, -1, -1))
        self.prefixes = PrefixCache(
            llama_cpp,
            self.ctx,
            self.memory,
            entries=prefix_cache_entries,
            max_tokens=self.n_ctx,
            metrics=self.metrics,
        )
        self._admitted = 0
        self._pending: list[_Sequence] = []  # sequences whose newest token's text waits
        self.outbox = Outbox()

    # -- BatchRunner -------------------------------------------------------------------

    def admit(self, job: Job) -> None:
        """Take a job into a free slot, reusing a cached prefix of its prompt if one fits."""
        messages, params = job.payload.messages, job.payload.params
        tokens, template_stops = self.prompt_tokens(messages, job.payload.tools)  # 400s
        slot = self._free.pop()
        stops = tuple(s for s in (*params.stop, *template_stops) if s)
        seq = _Sequence(
            job=job,
            slot=slot,
            prompt=tokens,
            tokens=list(tokens),
            limit=min(params.max_tokens, self.n_ctx - len(tokens)),
            sampler=sampling.chain(self._lib, self.vocab, params),
            greedy=sampling.greedy(params),
            grammar=sampling.grammar(self._lib, self.vocab, params),
            scanner=sampling.StopScanner(stops),
            order=self._admitted,
        )
        self._admitted += 1
        self._lib.llama_memory_seq_rm(self.memory, slot, -1, -1)
        self._reuse_prefix(seq)
        self._running[slot] = seq

    def step(self) -> list[tuple[Job, Any]]:
        """One decode step over every running sequence; returns the ones that ended."""
        started = time.perf_counter()
        ended: list[tuple[Job, Any]] = []
        for seq in list(self._running.values()):
            if seq.job.cancelled.is_set():
                ended.append((seq.job, self._end(seq, "cancelled")))
        if self._running and all(s.parked for s in self._running.values()):
            self._unpark()  # nothing holds cells that could be waited for
        plan = self._plan(sorted(self._running.values(), key=lambda s: s.order))
        decode_seconds = self._decode(plan, ended) if plan else 0.0
        if not plan:  # nothing was evaluated to hand the text on beside
            self._hand_on(ended)
        # Ended requests' text is handed over now, before the scheduler's last events.
        if ended:
            self.outbox.drain()
        else:
            self.outbox.flush()
        if plan:
            tokens = sum(count for _seq, _start, count in plan)
            self.metrics.record(time.perf_counter() - started, decode_seconds, tokens, len(plan))
        return ended

    def reset(self) -> None:
        self._lib.llama_synchronize(self.ctx)
        self._pending.clear()
        self.outbox.drain()  # before the scheduler fails what is running
        for seq in list(self._running.values()):
            self._release(seq)

    def slot_of(self, job: Job) -> int | None:
        """The slot ``job`` runs in, or None once it ended (for the operator and tests)."""
        return next((slot for slot, seq in list(self._running.items()) if seq.job is job), None)

    @property
    def slots_in_use(self) -> int:
        return len(self._running)

    @property
    def prefix_entries(self) -> int:
        return len(self.prefixes)

    # -- one step ----------------------------------------------------------------------

    def _plan(self, running: list[_Sequence]) -> list[tuple[_Sequence, int, int]]:
        """(sequence, first position, token count) for this step: the last token of every
        sequence that has only that one left (the next decode token, with logits), then
        chunks of the others' tokens in admission order within the chunk budget: the
        prompt chunk if the step has such a token (a bigger step would stall its answer),
        else ``PREFILL_TOKENS``.

        In a step of its own, a prompt's last token is held back for the next step, where
        it is evaluated alone like a decode token: its logits (the first answer token) then
        come out of the same arithmetic whether the rest of the prompt was evaluated or
        reused from the prefix cache, so a repeated request on an idle service gets the
        same greedy answer. Beside other tokens the arithmetic differs anyway (docs/api.md),
        and the last token comes with the rest of its prompt, a step sooner.
        """
        active = [seq for seq in running if not seq.parked]
        plan = [(seq, seq.n_past, 1) for seq in active if len(seq.tokens) - seq.n_past == 1]
        budget, held_back = (self.chunk, 0) if plan else (self.prefill, 1)
        for seq in active:
            remaining = len(seq.tokens) - seq.n_past
            if remaining > 1 and budget > 0:
                count = min(budget, remaining - held_back)
                plan.append((seq, seq.n_past, count))
                budget -= count
        return plan

    def _fill(self, plan: list[tuple[_Sequence, int, int]]) -> None:
        batch = self.batch
        token, pos, n_seq, seq_ids = batch.token, batch.pos, batch.n_seq_id, batch.seq_id
        logits = batch.logits
        i = 0
        for seq, start, count in plan:
            for k in range(count):
                token[i] = seq.tokens[start + k]
                pos[i] = start + k
                n_seq[i] = 1
                seq_ids[i][0] = seq.slot
                logits[i] = 0
                i += 1
            if start + count == len(seq.tokens):
                logits[i - 1] = 1
                seq.out = i - 1
            else:
                seq.out = None
        batch.n_tokens = i

    def _decode(
        self, plan: list[tuple[_Sequence, int, int]], ended: list[tuple[Job, Any]]
    ) -> float:
        """Decode the plan and sample; on failure retry without the request(s) at fault.

        Sequences that end (finished or failed) are appended to ``ended``; ``plan`` is left
        holding what was decoded. Returns the seconds from each successful ``llama_decode``
        to the end of its evaluation (with ``overlap``, the text handed on meanwhile
        included). Sampling follows each evaluation at once: the next one overwrites the
        logits.
        """
        lib = self._lib
        failures: list[tuple[_Sequence, str, int]] = []
        seconds = 0.0
        groups = [list(plan)]
        plan.clear()
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            self._fill(group)
            began = time.perf_counter()
            rc = lib.llama_decode(self.ctx, self.batch)
            if rc == 0:
                self._advance(group)
                plan.extend(group)
                self._hand_on(ended)  # while a GPU evaluates
                lib.llama_synchronize(self.ctx)
                seconds += time.perf_counter() - began
                for seq, _start, _count in group:
                    if seq.out is not None:
                        last = self._sample(seq)
                        if last is not None:
                            ended.append((seq.job, last))
                continue
            if rc == 1:  # no room in the KV cache; nothing was evaluated
                seq = max(group, key=lambda item: item[0].order)[0]
                others = (o for o in self._running.values() if o is not seq)
                if len(group) > 1 or any(other.n_past for other in others):
                    self._park(seq)  # until a running request ends and frees its cells
                else:  # alone in the cache, and still no room: it can never fit
                    self.metrics.kv_full += 1
                    message = TOO_LARGE.format(tokens=len(seq.tokens), n_ctx=self.n_ctx)
                    failures.append((seq, message, 400))
                    lib.llama_memory_seq_rm(self.memory, seq.slot, -1, -1)
                groups.insert(0, [item for item in group if item[0] is not seq])
                continue
            # Any other error: undo what this step may have stored, then find the culprit
            # by decoding each request on its own.
            self.metrics.decode_errors += 1
            log.error("llama_decode returned %d for a batch of %d requests", rc, len(group))
            for seq, start, _count in group:
                lib.llama_memory_seq_rm(self.memory, seq.slot, start, -1)
            if len(group) == 1:
                failures.append((group[0][0], DECODE_FAILED, 503))
            else:
                groups[:0] = [[item] for item in group]
        for seq, message, status in failures:
            seq.out = None
            self._release(seq)
            ended.append((seq.job, Failed(message, status, 2 if status == 503 else None)))
        return seconds

    def _park(self, seq: _Sequence) -> None:
        """Free ``seq``'s cells; it waits (in its slot) until a running request ends."""
        self.metrics.kv_waits += 1
        log.info("KV cache full: a request waits for a running one to end")
        self._lib.llama_memory_seq_rm(self.memory, seq.slot, -1, -1)
        seq.history = []
        seq.parked = True

    def _unpark(self) -> None:
        """Let waiting requests try again: each first reuses what the prefix cache holds."""
        for seq in self._running.values():
            if seq.parked:
                seq.parked = False
                self._reuse_prefix(seq)

    def _advance(self, group: list[tuple[_Sequence, int, int]]) -> None:
        for seq, start, count in group:
            seq.history.extend(seq.tokens[start : start + count])
            # Prompt tokens evaluated (again, for a request that waited for KV room).
            self.metrics.prompt_tokens += max(0, min(start + count, len(seq.prompt)) - start)

    def _sample(self, seq: _Sequence) -> Finish | None:
        """Sample the next token of ``seq``; returns its ``Finish`` if it ended. Its text is
        handed on now, or with ``overlap`` during the next step (unless it is the first or
        the last)."""
        lib = self._lib
        if seq.greedy:
            token = int(sampling.logits(lib, self.vocab, self.ctx, seq.out).argmax())
        else:
            token = lib.llama_sampler_sample(seq.sampler, self.ctx, seq.out)
        if seq.grammar is not None:
            # As llama.cpp's common sampler does: check the freely sampled token against the
            # grammar, and only when it is refused apply the grammar to the whole vocabulary
            # and sample again (measured in scripts/bench/structured.py).
            if not sampling.allowed(lib, seq.grammar, token):
                token = sampling.constrained(
                    lib, self.vocab, self.ctx, seq.out, seq.grammar, seq.sampler
                )
            lib.llama_sampler_accept(seq.grammar, token)
        out, seq.out = seq.out, None
        if lib.llama_vocab_is_eog(self.vocab, token):
            return self._end(seq, "stop")
        seq.completion += 1
        seq.tokens.append(token)  # the next step evaluates it, unless the answer ends here
        top = seq.job.payload.params.top_logprobs
        if top is not None:  # only sequences that asked pay for the log-softmax
            entry = sampling.logprobs(lib, self.vocab, self.ctx, out, token, top, self.piece)
            seq.logprobs.append(entry)
        # With overlap, the first token still goes at once: it is the request's time to
        # first token, which a step's queuing would add to.
        if self.overlap and 1 < seq.completion < seq.limit:
            self._pending.append(seq)
            return None
        return self._text(seq)

    def _text(self, seq: _Sequence) -> Finish | None:
        """Hand on the text of ``seq``'s newest token; its ``Finish`` at a stop string or
        its token limit."""
        ready, hit = seq.scanner.feed(seq.decoder.decode(self.piece(seq.tokens[-1])))
        if ready:
            self.outbox.put(seq.job, Delta(ready, tuple(seq.logprobs)))
            seq.logprobs.clear()
        if hit:
            return self._end(seq, "stop")
        if seq.completion >= seq.limit:
            return self._end(seq, "length")
        return None

    def _hand_on(self, ended: list[tuple[Job, Any]]) -> None:
        """The text of the tokens sampled last step (``overlap``); a sequence that reaches
        a stop string ends, and what this step evaluates for it is not sampled."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for seq in pending:
            if seq.sampler is not None:  # not ended since (cancelled)
                last = self._text(seq)
                if last is not None:
                    seq.out = None
                    ended.append((seq.job, last))
        self.outbox.flush()

    def _end(self, seq: _Sequence, reason: str) -> Finish:
        # With ``overlap`` a step may still be evaluating this sequence's last token; its
        # cells are read (the prefix cache) and freed once it is done.
        self._lib.llama_synchronize(self.ctx)
        if reason != "stop" or not seq.scanner.hit:
            tail = seq.scanner.flush(seq.decoder.decode(b"", final=True))
            if tail and reason != "cancelled":
                self.outbox.put(seq.job, Delta(tail, tuple(seq.logprobs)))
        if reason != "cancelled":  # its KV serves later prompts that start the same way
            self.prefixes.remember(seq.slot, seq.history)
        self._release(seq)
        return Finish(reason, len(seq.prompt), seq.completion, seq.cached)

    def _release(self, seq: _Sequence) -> None:
        """Free the slot and its KV cells."""
        self._lib.llama_memory_seq_rm(self.memory, seq.slot, -1, -1)
        self._lib.llama_sampler_free(seq.sampler)
        seq.sampler = None
        if seq.grammar is not None:
            self._lib.llama_sampler_free(seq.grammar)
            seq.grammar = None
        del self._running[seq.slot]
        self._free.append(seq.slot)
        self._unpark()  # its cells are free: requests waiting for KV room try again

    # -- prefix cache ------------------------------------------------------------------

    def _reuse_prefix(self, seq: _Sequence) -> None:
        """Start ``seq`` from the longest cached prefix of its tokens (if any)."""
        length = self.prefixes.reuse(seq.tokens, seq.slot)
        seq.history = seq.tokens[:length]
        seq.cached = min(length, len(seq.prompt))

    def close(self) -> None:
        self.reset()
        if self.batch is not None:
            self._lib.llama_batch_free(self.batch)
            self.batch = None
        self.outbox.close()
        self._context.close()
