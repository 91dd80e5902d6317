"""Benchmark grammar-constrained JSON output against free text on the same prompt.

Usage::

    .venv/bin/python scripts/bench/structured.py [--runs N] [--tokens N] [--record]

Loads the bundled models into the inference service's app in this process, once with one
slot (``inference.parallel`` = 1) and once with the default slots, and streams the same
question answered freely and with ``response_format`` ``json_schema`` (temperature 0),
alternating the order each run. For
each answer it takes the tokens/s from the request to its last chunk, and the process's
CPU seconds per token over the same span, which a busy neighbour on a shared machine
distorts less. Target: JSON ≥ 80 % of free text.
``--record`` appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import append_to_doc, bench_args, install_models, markdown_table, run_stamp
from litestar.testing import TestClient

from appliance import vault
from appliance.cli import initialise
from appliance.config import Settings
from appliance.inference.engine import load_engine
from appliance.inference.server import create_inference_app

QUESTION = "Describe the city of Paris: its name, its population and many facts about it."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
        "facts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "population", "facts"],
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(http: TestClient, key: str, structured: bool, tokens: int) -> tuple[float, float]:
    """Tokens/s and CPU ms per token of one streamed answer, request to last chunk (the
    test client delivers the chunks together; the prompt is the same for both kinds and
    comes from the prefix cache after the warm-up)."""
    body: dict = {
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if structured:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": SCHEMA},
        }
    completion = 0
    first, cpu_first = time.perf_counter(), cpu_seconds()
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    last, cpu_last = time.perf_counter(), cpu_seconds()
    assert completion > 0
    return completion / (last - first), 1000 * (cpu_last - cpu_first) / completion


def main() -> int:
    args = bench_args(__doc__, runs=5, tokens=96)

    rows = []
    for slots, environ in (("1", {"APPLIANCE_INFERENCE__PARALLEL": "1"}), ("default", {})):
        data_dir = Path(tempfile.gettempdir()) / "appliance-bench-structured"
        settings = Settings.load(data_dir=data_dir, environ=environ)
        install_models(settings)
        initialise(settings)
        engine = load_engine(settings, with_embeddings=False)
        key = vault.read_secret(settings, "inference_key")
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        with TestClient(create_inference_app(settings, engine)) as http:
            measure(http, key, False, 8)  # warm-up
            for run in range(args.runs):
                for structured in (False, True) if run % 2 == 0 else (True, False):
                    results[structured].append(measure(http, key, structured, args.tokens))
        free = [statistics.median(v[i] for v in results[False]) for i in (0, 1)]
        json_ = [statistics.median(v[i] for v in results[True]) for i in (0, 1)]
        speed_ratio = json_[0] / free[0]
        cpu_ratio = free[1] / json_[1]
        rows.append(
            [
                f"{slots} ({settings.inference.parallel})",
                f"{free[0]:.1f}",
                f"{json_[0]:.1f}",
                f"{speed_ratio:.0%}",
                f"{free[1]:.2f} / {json_[1]:.2f}",
                f"{cpu_ratio:.0%}",
                "PASS" if min(speed_ratio, cpu_ratio) >= 0.8 else "FAIL",
            ]
        )
    header = [
        "Slots",
        "Free text tok/s",
        "JSON schema tok/s",
        "JSON / free",
        "CPU ms per token free / JSON",
        "Free / JSON CPU",
        "≥ 80 %",
    ]
    table = markdown_table(header, rows)
    print(table)
    if args.record:
        append_to_doc(
            "## Structured output (scripts/bench/structured.py)",
            f"{run_stamp()}, load average {os.getloadavg()[0]:.1f}; median of {args.runs} "
            f"answers of up to {args.tokens} tokens, temperature 0, the bundled chat model. "
            "JSON: `response_format` json_schema (llama.cpp grammar).",
            table,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
