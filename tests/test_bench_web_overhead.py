"""scripts/bench/web_overhead.py's table: web - service in ms for times, web / service for
rates; medians of the per-run figures, percentiles over all the gaps and TTFTs."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def test_comparison_rows(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import web_overhead

    service = {
        "ttft1": [0.100, 0.120, 0.110],
        "tps1": [50.0, 40.0, 45.0],
        "gaps": [0.020] * 19 + [0.100],
        "agg": [100.0],
        "ttftN": [0.2, 0.3],
        "short": [0.050],
    }
    web = {**service, "ttft1": [0.114, 0.103, 0.200], "tps1": [44.0], "short": [0.0525]}

    rows = web_overhead.comparison_rows({"service": service, "web": web}, streams=2)

    assert [row[0] for row in rows] == [
        "one stream TTFT",
        "one stream decode",
        "one stream inter-token p50",
        "one stream inter-token p95",
        "2 streams aggregate",
        "2 streams TTFT p50",
        "short request, not streamed",
    ]
    assert rows[0][1:] == ["110.0 ms", "114.0 ms", "+4.0 ms"]
    assert rows[1][1:] == ["45.0 tok/s", "44.0 tok/s", "0.978"]
    assert rows[3][1:] == ["24.0 ms", "24.0 ms", "+0.0 ms"]
    assert rows[5][1:] == ["250.0 ms", "250.0 ms", "+0.0 ms"]
    assert rows[6][3] == "+2.5 ms"
