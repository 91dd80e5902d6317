"""scripts/bench/step_profile.py's queued device: ``llama_decode`` returns at once and the
next llama.cpp call waits for it; with ``--stand-in-ms`` a decode-only step is not
evaluated when the last evaluated step had logits at all of its indices."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


class Lib:
    def __init__(self) -> None:
        self.evaluated: list[int] = []
        self.seconds = 0.0

    def llama_decode(self, ctx, batch) -> int:
        time.sleep(self.seconds)
        self.evaluated.append(batch.n_tokens)
        return 0

    def llama_synchronize(self, ctx) -> None:
        pass


def batch(n: int, outputs: int) -> SimpleNamespace:
    """``n`` tokens, the last ``outputs`` of them with logits."""
    return SimpleNamespace(n_tokens=n, logits=[0] * (n - outputs) + [1] * outputs)


def test_a_stand_in_replaces_only_decode_steps_whose_logits_were_evaluated(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import step_profile

    lib = Lib()
    device = step_profile.QueuedDevice(lib, stand_in_ms=1)
    try:
        steps = [batch(40, 1), batch(1, 1), batch(1, 1), batch(3, 3), batch(3, 3), batch(2, 2)]
        for step in steps:
            assert device.llama_decode(None, step) == 0
            device.llama_synchronize(None)  # waits for the queued step
        # The prompt and the first step of each shape are evaluated; 2 and 3 outputs
        # after 3 evaluated ones read those again.
        assert lib.evaluated == [40, 1, 3]

        plain = step_profile.QueuedDevice(lib)
        lib.seconds = 0.5
        began = time.perf_counter()
        plain.llama_decode(None, batch(1, 1))
        assert time.perf_counter() - began < 0.25  # returned before the evaluation ended
        plain.llama_synchronize(None)
        assert lib.evaluated == [40, 1, 3, 1]
        plain.device.shutdown()
    finally:
        device.device.shutdown()
