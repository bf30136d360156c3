"""GET /health/live through the whole paygate stack vs. a bare Litestar endpoint."""

from __future__ import annotations

from bench.runner import PeakRSS, Row, load, paygate_server, server


def run(*, quick: bool) -> list[Row]:
    with server("bench.baseline_app:create_app") as port:
        load(port, quick=True, path="/health/live", duration=1.0)  # warm-up
        base = load(port, quick=quick, path="/health/live")
    with paygate_server() as (port, pid), PeakRSS(pid) as rss:
        load(port, quick=True, path="/health/live", duration=1.0)
        ours = load(port, quick=quick, path="/health/live")
    return [
        Row(
            scenario="health",
            ours=ours["rps"],
            baseline=base["rps"],
            unit="req/s",
            goal=">= 0.7",
            p50_ms=ours["p50_ms"],
            p99_ms=ours["p99_ms"],
            peak_rss_mb=rss.mb,
            notes=f"errors ours={ours['errors']} baseline={base['errors']}",
        )
    ]
