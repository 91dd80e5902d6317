"""The batched chat engine's counters: totals since start (``/metrics``) and means over
its recent steps (``/healthz``). A step's decode time runs from ``llama_decode`` to the end
of the evaluation; the rest of the step is the Python between two evaluations."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

#: Steps the averages in /healthz are taken over.
WINDOW = 256


@dataclass
class BatchMetrics:
    """Counters since start (for /metrics) and a window of recent steps (for /healthz)."""

    steps: int = 0
    step_seconds: float = 0.0
    decode_seconds: float = 0.0
    batch_tokens: int = 0
    batch_sequences: int = 0
    prompt_tokens: int = 0
    prefix_lookups: int = 0
    prefix_hits: int = 0
    prefix_tokens_reused: int = 0
    kv_full: int = 0
    kv_waits: int = 0
    decode_errors: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, step: float, decode: float, tokens: int, sequences: int) -> None:
        with self.lock:
            self.steps += 1
            self.step_seconds += step
            self.decode_seconds += decode
            self.batch_tokens += tokens
            self.batch_sequences += sequences
            self.recent.append((step, decode, tokens, sequences))

    def averages(self) -> dict[str, float]:
        """Means over the last ``WINDOW`` steps (zeros before the first step)."""
        with self.lock:
            recent = list(self.recent) or [(0.0,) * 4]
        step, decode, tokens, sequences = (sum(c) / len(recent) for c in zip(*recent, strict=True))
        return {
            "step_ms": round(step * 1000, 3),
            "decode_ms": round(decode * 1000, 3),
            "overhead_ms": round((step - decode) * 1000, 3),
            "batch_tokens": round(tokens, 2),
            "batch_sequences": round(sequences, 2),
        }

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_lookups if self.prefix_lookups else 0.0
