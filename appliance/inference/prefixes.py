"""The batched engine's prefix cache: finished sequences' KV state kept in host memory.

When a request ends, its sequence's KV state (``llama_state_seq_get_data``: its cells'
keys and values) is copied out to host memory, and its cells are freed with the slot. A
later prompt that starts with the same tokens gets the state copied into its slot
(``llama_state_seq_set_data``), cut to the common prefix, and only evaluates the rest.

Cached prefixes hold no KV cells, as with llama-server (which saves idle slots to its
prompt cache in RAM and clears them): llama.cpp's attention spans every used cell at every
step, so prefixes kept in the KV cache slowed every running answer (one stream beside 8
cached prompts decoded at 0.83x, docs/benchmarks.md), and took the room of running
requests. At most ``entries`` are kept, and together at most ``max_tokens`` tokens (the
KV cache's size, so the host memory they take is at most the KV cache's); the least
recently used are dropped first. Runs on the chat scheduler's thread.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import Any

from appliance.inference.stepmetrics import BatchMetrics

#: Shorter common prefixes are not worth a cache lookup's bookkeeping.
MIN_REUSED_TOKENS = 8


class PrefixCache:
    """Up to ``entries`` finished sequences' tokens and KV state, least recently used first."""

    def __init__(
        self,
        lib: Any,
        ctx: Any,
        memory: Any,
        *,
        entries: int,
        max_tokens: int,
        metrics: BatchMetrics,
    ):
        self._lib = lib
        self._ctx = ctx
        self._memory = memory
        self.entries = entries
        self.max_tokens = max_tokens
        self._metrics = metrics
        #: (the tokens whose KV the state holds, the state) per entry, least recently used first
        self._held: OrderedDict[int, tuple[list[int], Any]] = OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._held)

    def clear(self) -> None:
        self._held.clear()

    @property
    def tokens(self) -> int:
        """Tokens held over all entries."""
        return sum(len(tokens) for tokens, _state in self._held.values())

    def reuse(self, tokens: list[int], slot: int) -> int:
        """Copy the longest cached prefix of ``tokens`` into ``slot`` (empty); returns its
        length, 0 if none was long enough or the KV cache had no room for it.

        At least the last token is left to evaluate: its logits give the next token.
        """
        if not self.entries:
            return 0
        self._metrics.prefix_lookups += 1
        best, length = None, 0
        for key, (held, _state) in self._held.items():
            common = common_prefix(held, tokens)
            if common > length:
                best, length = key, common
        length = min(length, len(tokens) - 1)
        if best is None or length < MIN_REUSED_TOKENS:
            return 0
        state = self._held[best][1]
        if not self._lib.llama_state_seq_set_data(self._ctx, state, len(state), slot):
            self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
            return 0  # no room for it now: the prompt is evaluated instead
        self._lib.llama_memory_seq_rm(self._memory, slot, length, -1)
        self._held.move_to_end(best)
        self._metrics.prefix_hits += 1
        self._metrics.prefix_tokens_reused += length
        return length

    def remember(self, slot: int, tokens: list[int]) -> None:
        """Keep the KV state of ``slot`` (holding ``tokens``) before its cells are freed."""
        if not self.entries or not MIN_REUSED_TOKENS <= len(tokens) <= self.max_tokens:
            return
        for key, (held, _state) in self._held.items():
            if common_prefix(held, tokens) == len(tokens):  # already covered
                self._held.move_to_end(key)
                return
        for key, (held, _state) in list(self._held.items()):
            if common_prefix(held, tokens) == len(held):  # superseded by this one
                del self._held[key]
        while self._held and (
            len(self._held) >= self.entries or self.tokens + len(tokens) > self.max_tokens
        ):
            self._held.popitem(last=False)
        size = self._lib.llama_state_seq_get_size(self._ctx, slot)
        state = (ctypes.c_uint8 * size)()
        if self._lib.llama_state_seq_get_data(self._ctx, state, size, slot) == size:
            self._held[self._next] = (list(tokens), state)
            self._next += 1


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
