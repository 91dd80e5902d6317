"""The batched engine's prefix cache: finished sequences' KV cells kept for reuse.

A finished sequence's cells are kept under a spare sequence id (the cells are shared, not
copied); a later prompt that starts with the same tokens gets them with
``llama_memory_seq_cp`` and only evaluates the rest. At most ``entries`` are kept, least
recently used dropped first; under KV pressure the engine drops them one at a time, least
recently used first, before it makes a request wait. Runs on the chat scheduler's thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: Shorter common prefixes are not worth a cache lookup's bookkeeping.
MIN_REUSED_TOKENS = 8


class PrefixCache:
    """Spare sequence ids ``first .. first + entries - 1`` holding cached prefixes."""

    def __init__(self, lib: Any, memory: Any, *, first: int, entries: int, metrics: Any):
        self._lib = lib
        self._memory = memory
        self.entries = entries
        self._metrics = metrics
        #: spare sequence id -> the tokens its KV cells hold (least recently used first)
        self._held: OrderedDict[int, list[int]] = OrderedDict()
        self._spare = list(range(first + entries - 1, first - 1, -1))

    def __len__(self) -> int:
        return len(self._held)

    def reuse(self, tokens: list[int], slot: int) -> int:
        """Copy the longest cached prefix of ``tokens`` into ``slot``; returns its length.

        At least the last token is left to evaluate: its logits give the next token.
        """
        if not self.entries:
            return 0
        self._metrics.prefix_lookups += 1
        best, length = None, 0
        for spare, held in self._held.items():
            common = common_prefix(held, tokens)
            if common > length:
                best, length = spare, common
        length = min(length, len(tokens) - 1)
        if best is None or length < MIN_REUSED_TOKENS:
            return 0
        self._lib.llama_memory_seq_cp(self._memory, best, slot, 0, length)
        self._held.move_to_end(best)
        self._metrics.prefix_hits += 1
        self._metrics.prefix_tokens_reused += length
        return length

    def remember(self, slot: int, tokens: list[int]) -> None:
        """Keep the cells of ``slot`` (holding ``tokens``) under a spare id."""
        if not self.entries or len(tokens) < MIN_REUSED_TOKENS:
            return
        for spare, held in self._held.items():
            if common_prefix(held, tokens) == len(tokens):  # already covered
                self._held.move_to_end(spare)
                return
        for spare, held in list(self._held.items()):
            if common_prefix(held, tokens) == len(held):  # superseded by this one
                self._forget(spare)
        if not self._spare:
            self._forget(next(iter(self._held)))
        spare = self._spare.pop()
        self._lib.llama_memory_seq_cp(self._memory, slot, spare, -1, -1)
        self._held[spare] = list(tokens)

    def evict_lru(self) -> bool:
        """Drop the least recently used prefix; False if none was held."""
        if not self._held:
            return False
        self._forget(next(iter(self._held)))
        return True

    def _forget(self, spare: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, spare, -1, -1)
        del self._held[spare]
        self._spare.append(spare)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
