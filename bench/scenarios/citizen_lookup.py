"""GET /v1/pay/{code} with a warm cache vs. a bare Litestar JSON endpoint (same run)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.payments_support import env, seed_bills
from bench.runner import PeakRSS, Row, load, paygate_server, server


def run(*, quick: bool) -> list[Row]:
    codes = seed_bills(200)
    with tempfile.TemporaryDirectory() as tmp:
        ours_file = Path(tmp) / "ours.jsonl"
        ours_file.write_text(
            "".join(json.dumps({"method": "GET", "path": f"/v1/pay/{c}"}) + "\n" for c in codes)
        )
        base_file = Path(tmp) / "base.jsonl"
        base_file.write_text(
            "".join(json.dumps({"method": "GET", "path": f"/bill/{c}"}) + "\n" for c in codes)
        )
        with server("bench.baseline_payments:create_app") as port:
            load(port, quick=True, requests_file=str(base_file), duration=1.0)
            base = load(port, quick=quick, requests_file=str(base_file))
        # The limiter still runs (one Redis round trip per request); its limit is lifted
        # because every bench request comes from one address.
        with (
            env(PAYGATE_LOOKUP_RATE_LIMIT="1000000000"),
            paygate_server() as (port, pid),
            PeakRSS(pid) as rss,
        ):
            load(port, quick=True, requests_file=str(ours_file), duration=1.0)  # warms the cache
            ours = load(port, quick=quick, requests_file=str(ours_file))
    return [
        Row(
            scenario="citizen_lookup",
            ours=ours["rps"],
            baseline=base["rps"],
            unit="req/s",
            goal=">= 0.6",
            p50_ms=ours["p50_ms"],
            p99_ms=ours["p99_ms"],
            peak_rss_mb=rss.mb,
            notes=f"errors ours={ours['errors']} baseline={base['errors']}",
        )
    ]
