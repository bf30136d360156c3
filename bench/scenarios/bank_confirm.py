"""Bank confirmations/s (signed, each paying a distinct bill) vs. one bare INSERT transaction.

Each confirmation verifies the HMAC, checks the nonce in Redis, opens an attempt, and runs
confirm_payment (bill row lock, receipt, bill event, audit, two outbox messages). The
baseline is a bare Litestar endpoint committing one INSERT. A second, lighter run (4
connections) reports p99 near 80 % of the peak rate (closed-loop load cannot pin a rate).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.payments_support import (
    BANK_CODE,
    BANK_SECRET,
    confirm_requests,
    count_paid,
    env,
    seed_bills,
)
from bench.runner import PeakRSS, Row, load, paygate_server, server


def run(*, quick: bool) -> list[Row]:
    n = 1_500 if quick else 6_000
    duration = 2.0 if quick else 6.0
    codes = seed_bills(2 * n + 400)
    with tempfile.TemporaryDirectory() as tmp:
        base_file = Path(tmp) / "base.jsonl"
        base_file.write_text(
            json.dumps({"method": "POST", "path": "/insert", "body": '{"x":1}'}) + "\n"
        )
        with server("bench.baseline_payments:create_app") as port:
            load(port, quick=True, requests_file=str(base_file), duration=1.0)
            base = load(port, quick=quick, requests_file=str(base_file), duration=duration)
        banks = f"{BANK_CODE}={BANK_SECRET}@http://127.0.0.1:9/banks/{BANK_CODE}"
        with env(PAYGATE_BANKS=banks), paygate_server() as (port, pid), PeakRSS(pid) as rss:
            warm = confirm_requests(codes[:200], Path(tmp) / "warm.jsonl")
            load(port, quick=True, requests_file=str(warm), duration=1.0, max_requests=200)
            peak_file = confirm_requests(codes[200 : 200 + n], Path(tmp) / "peak.jsonl")
            ours = load(
                port, quick=quick, requests_file=str(peak_file), duration=duration, max_requests=n
            )
            light_file = confirm_requests(codes[200 + n : 200 + 2 * n], Path(tmp) / "light.jsonl")
            light = load(
                port,
                quick=quick,
                requests_file=str(light_file),
                duration=duration,
                max_requests=n,
                connections=4,
            )
    paid = count_paid(codes[200 : 200 + n])
    share = round(100 * light["rps"] / ours["rps"]) if ours["rps"] else 0
    return [
        Row(
            scenario="bank_confirm",
            ours=ours["rps"],
            baseline=base["rps"],
            unit="req/s",
            goal=">= 0.5",
            p50_ms=ours["p50_ms"],
            p99_ms=ours["p99_ms"],
            peak_rss_mb=rss.mb,
            notes=(
                f"errors ours={ours['errors']} baseline={base['errors']}; "
                f"bills paid by the peak run {paid}/{ours['requests']}; "
                f"4 connections: {light['rps']} req/s ({share}% of peak), "
                f"p99 {light['p99_ms']} ms"
            ),
        )
    ]
