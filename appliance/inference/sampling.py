"""Sampling: llama.cpp sampler chains for the batched engine (temperature, top_p, seed,
penalties, ``logit_bias``, grammars for structured output and forced tool calls) and
stop strings.

The grammar is kept out of the chain, as llama.cpp's common sampler does: the token the
chain picks is checked against the grammar, and only when the grammar refuses it is the
grammar applied to the whole vocabulary and the token sampled again. Applying it to every
token of the vocabulary at every step costs far more than decoding on a small model
(scripts/bench/structured.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.errors import InvalidInput


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: A GBNF grammar the answer must match (structured output, forced tool calls).
    grammar: str | None = None
    #: How many alternatives to return with each token's log probability; None: none at all.
    top_logprobs: int | None = None


#: Tokens the presence and frequency penalties look back over (as ``Llama.generate``).
PENALTY_LAST_N = 64


def greedy(params: GenerationParams) -> bool:
    """Whether the chain of ``params`` is llama.cpp's greedy sampler alone. Its token is then
    the first of the largest logits, taken here without the chain's copy of every logit
    into a candidate array (~0.1 ms a token against ~0.01)."""
    return params.temperature == 0 and not (
        params.logit_bias or params.presence_penalty or params.frequency_penalty
    )


def logits(lib: Any, vocab: Any, ctx: Any, out: int) -> np.ndarray:
    """The logits at batch index ``out`` (a view of llama.cpp's buffer, valid until the
    next ``llama_decode``)."""
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    return np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, out), shape=(n_vocab,))


def chain(lib: Any, vocab: Any, params: GenerationParams) -> Any:
    """A sampler chain like ``Llama.generate``'s for the same parameters (no grammar)."""
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    if params.logit_bias:
        biases = (lib.llama_logit_bias * len(params.logit_bias))(
            *(lib.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
        )
        bias = lib.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases)
        lib.llama_sampler_chain_add(sampler, bias)
    if params.presence_penalty or params.frequency_penalty:
        penalties = lib.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty, params.presence_penalty
        )
        lib.llama_sampler_chain_add(sampler, penalties)
    if params.temperature == 0:
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())
    else:
        seed = params.seed if params.seed is not None else random.randrange(2**31)  # noqa: S311
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_top_k(40))
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_top_p(params.top_p, 1))
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_min_p(0.05, 1))
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_temp(params.temperature))
        lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_dist(seed))
    return sampler


@contextlib.contextmanager
def _stderr_discarded() -> Iterator[None]:
    """File descriptor 2 on /dev/null for the block (the services log to stdout)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def grammar(lib: Any, vocab: Any, params: GenerationParams) -> Any:
    """The grammar sampler of ``params.grammar`` (None without one).

    llama.cpp prints a grammar it cannot parse, whole, to stderr (``fprintf``, not its
    log): the grammar is built from the request's JSON schema, whose names and values must
    not reach the service's log, so stderr is discarded while it parses.
    """
    if not params.grammar:
        return None
    with _stderr_discarded():
        sampler = lib.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
    if not sampler:
        raise InvalidInput("The grammar for this request could not be built.")
    return sampler


def allowed(lib: Any, grammar_sampler: Any, token: int) -> bool:
    """Whether the grammar allows ``token`` next."""
    one = (lib.llama_token_data * 1)(lib.llama_token_data(token, 1.0, 0.0))
    candidates = lib.llama_token_data_array(one, 1, -1, False)
    lib.llama_sampler_apply(grammar_sampler, ctypes.byref(candidates))
    return one[0].logit != float("-inf")


def constrained(
    lib: Any, vocab: Any, ctx: Any, out: int, grammar_sampler: Any, sampler: Any
) -> int:
    """The next token sampled by ``sampler`` among those the grammar allows."""
    row = logits(lib, vocab, ctx, out)
    n_vocab = len(row)
    data = np.empty(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    data["id"] = np.arange(n_vocab, dtype=np.int32)
    data["logit"] = row
    data["p"] = 0.0
    candidates = lib.llama_token_data_array(
        data.ctypes.data_as(lib.llama_token_data_p), n_vocab, -1, False
    )
    lib.llama_sampler_apply(grammar_sampler, ctypes.byref(candidates))
    lib.llama_sampler_apply(sampler, ctypes.byref(candidates))
    return int(candidates.data[candidates.selected].id)


class StopScanner:
    """Holds back text that may be the start of a stop sequence."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> tuple[str, bool]:
        self.pending += piece
        for stop in self.stops:
            index = self.pending.find(stop)
            if index >= 0:
                out, self.pending, self.hit = self.pending[:index], "", True
                return out, True
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self, piece: str) -> str:
        out, self.pending = self.pending + piece, ""
        return out


def logprobs(
    lib: Any, vocab: Any, ctx: Any, out: int, token: int, top: int, piece: Any
) -> dict[str, Any]:
    """OpenAI's ``logprobs.content`` entry of ``token`` from the logits at batch index
    ``out``: its log probability under the model's distribution (the raw logits, before
    temperature, penalties and grammar) and the ``top`` most likely tokens'.
    ``piece(token)`` is a token's bytes."""
    x = logits(lib, vocab, ctx, out).astype(np.float64)
    peak = x.max()
    lp = x - (peak + np.log(np.exp(x - peak).sum()))

    def entry(t: int) -> dict[str, Any]:
        raw = piece(t)
        return {
            "token": raw.decode("utf-8", "replace"),
            "logprob": float(lp[t]),
            "bytes": list(raw),
        }

    best: list[int] = []
    if top:
        part = np.argpartition(-lp, top - 1)[:top]
        best = [int(t) for t in part[np.argsort(-lp[part], kind="stable")]]
    return {**entry(token), "top_logprobs": [entry(t) for t in best]}
