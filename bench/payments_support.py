"""Seeding and signing shared by the payment benchmarks (bench DB only, never tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.runner import PeakRSS, Row, load, paygate_server, server
from billing.models import Agency, Bill, BillLine, RevenueItem
from billing.payment_code import compose
from billing.personal import seal_payer_name
from channels.bank import transforms as t
from channels.money import fen_to_yuan
from gateway.db import create_engine

BANK_CODE = "102"
BANK_SECRET = secrets.token_hex(32)  # per run; handed to the server through PAYGATE_BANKS
AMOUNT = 20_000


async def _seed(n: int) -> list[str]:
    engine = create_engine(os.environ["DATABASE_URL"])
    codes = await _fresh_codes(engine, n)
    item_code = f"BENCH-{secrets.token_hex(4)}"
    agency_id = uuid.uuid4()
    bill_ids = [uuid.uuid4() for _ in range(n)]
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(RevenueItem).values(
                code=item_code,
                name="道路交通违法罚款",
                category="FINE",
                budget_subject="103050101001",
                split_l2_bp=10000,
                min_amount=1,
                max_amount=100_000_000,
                active_from=date(2020, 1, 1),
            )
        )
        await conn.execute(
            insert(Agency).values(
                id=agency_id,
                credit_code="12" + "".join(secrets.choice("0123456789") for _ in range(16)),
                name="某市公安局交通警察支队",
                region_code="330100",
            )
        )
        await conn.execute(
            insert(Bill),
            [
                {
                    "id": bid,
                    "agency_id": agency_id,
                    "agency_bill_no": f"B-{bid.hex[:16]}",
                    "request_hash": secrets.token_bytes(32),
                    "payment_code": code,
                    "category": "FINE",
                    "payer_type": "PERSON",
                    "payer_name_enc": seal_payer_name(bid, "张三"),
                    "principal_amount": AMOUNT,
                    "due_date": now.date() + timedelta(days=15),
                    "expires_at": now + timedelta(days=30),
                }
                for bid, code in zip(bill_ids, codes, strict=True)
            ],
        )
        await conn.execute(
            insert(BillLine),
            [
                {
                    "bill_id": bid,
                    "line_no": 1,
                    "item_code": item_code,
                    "quantity": 1,
                    "unit_amount": AMOUNT,
                    "amount": AMOUNT,
                }
                for bid in bill_ids
            ],
        )
    await engine.dispose()
    return codes


async def _fresh_codes(engine: AsyncEngine, n: int) -> list[str]:
    """n random payment codes that no bill has yet: the bench database keeps every run's
    bills, and random serials below 10**9 collide once it holds tens of thousands."""
    codes: set[str] = set()
    while len(codes) < n:
        codes |= {
            compose("330100", 26, "FINE", secrets.randbelow(10**9)) for _ in range(n - len(codes))
        }
        async with engine.connect() as conn:
            taken = await conn.scalars(
                select(Bill.payment_code).where(Bill.payment_code.in_(sorted(codes)))
            )
            codes -= set(taken)
    return list(codes)


def seed_bills(n: int) -> list[str]:
    """Insert n payable bills; return their payment codes."""
    return asyncio.run(_seed(n))


def confirm_requests(codes: list[str], path: Path) -> Path:
    """One signed bank confirmation per bill (unique serial and nonce), as load.py reads."""
    with path.open("w") as f:
        for code in codes:
            body = json.dumps(
                {
                    "payment_code": code,
                    "bank_serial": f"{BANK_CODE}{secrets.token_hex(10).upper()}",
                    "amount": fen_to_yuan(AMOUNT),
                    "paid_at": t.format_time(datetime.now(UTC)),
                    "pay_mode": "app",
                },
                separators=(",", ":"),
            )
            url_path = f"/v1/channels/bank/{BANK_CODE}/confirm"
            headers = t.sign(BANK_SECRET.encode(), "POST", url_path, body.encode(), BANK_CODE)
            f.write(
                json.dumps({"method": "POST", "path": url_path, "headers": headers, "body": body})
            )
            f.write("\n")
    return path


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the servers this scenario starts."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _count_paid(codes: list[str]) -> int:
    from sqlalchemy import func, select

    engine = create_engine(os.environ["DATABASE_URL"])
    async with engine.connect() as conn:
        n = await conn.scalar(
            select(func.count())
            .select_from(Bill)
            .where(Bill.payment_code.in_(codes), Bill.status == "PAID")
        )
    await engine.dispose()
    return int(n or 0)


def count_paid(codes: list[str]) -> int:
    """How many of these bills the run really paid (bank answers are HTTP 200 either way)."""
    return asyncio.run(_count_paid(codes))


def confirm_scenario(
    name: str,
    *,
    quick: bool,
    server_env: dict[str, str],
    make_requests: Callable[[list[str], Path], Path],
) -> list[Row]:
    """Confirmations/s, each paying a distinct bill, vs. a bare one-INSERT transaction.

    `make_requests(codes, path)` writes one confirmation per bill as load.py reads them.
    Lighter runs (8 and 16 connections) report p99 below the peak rate; closed-loop load
    cannot pin a rate, and grouped confirmations make the rate per connection depend on
    the load, so two points bracket 80 % of the peak.
    """
    n = 1_500 if quick else 6_000
    duration = 2.0 if quick else 6.0
    light_connections = (8, 16)
    codes = seed_bills((2 + len(light_connections)) * n + 400)
    with tempfile.TemporaryDirectory() as tmp:
        base_file = Path(tmp) / "base.jsonl"
        base_file.write_text(
            json.dumps({"method": "POST", "path": "/insert", "body": '{"x":1}'}) + "\n"
        )

        def baseline() -> dict[str, Any]:
            with server("bench.baseline_payments:create_app") as port:
                load(port, quick=True, requests_file=str(base_file), duration=1.0)
                return load(port, quick=quick, requests_file=str(base_file), duration=duration)

        # Baseline, ours, baseline: this machine's speed drifts by tens of per cent over a
        # minute, so the baseline is the mean of a run before and a run after ours.
        base_before = baseline()
        with env(**server_env), paygate_server() as (port, pid), PeakRSS(pid) as rss:
            warm = make_requests(codes[:200], Path(tmp) / "warm.jsonl")
            load(port, quick=True, requests_file=str(warm), duration=1.0, max_requests=200)
            peak_file = make_requests(codes[200 : 200 + n], Path(tmp) / "peak.jsonl")
            ours = load(
                port, quick=quick, requests_file=str(peak_file), duration=duration, max_requests=n
            )
            lights = []
            for i, conns in enumerate(light_connections, start=1):
                batch = codes[200 + i * n : 200 + (i + 1) * n]
                light_file = make_requests(batch, Path(tmp) / f"light{conns}.jsonl")
                light = load(
                    port,
                    quick=quick,
                    requests_file=str(light_file),
                    duration=duration,
                    max_requests=n,
                    connections=conns,
                )
                share = round(100 * light["rps"] / ours["rps"]) if ours["rps"] else 0
                lights.append(
                    f"{conns} connections: {light['rps']} req/s ({share}% of peak), "
                    f"p99 {light['p99_ms']} ms"
                )
        base_after = baseline()
    base_rps = round((base_before["rps"] + base_after["rps"]) / 2, 1)
    paid = count_paid(codes[200 : 200 + n])
    return [
        Row(
            scenario=name,
            ours=ours["rps"],
            baseline=base_rps,
            unit="req/s",
            goal=">= 0.5",
            p50_ms=ours["p50_ms"],
            p99_ms=ours["p99_ms"],
            peak_rss_mb=rss.mb,
            notes=(
                f"baseline before/after {base_before['rps']}/{base_after['rps']} req/s; "
                f"errors ours={ours['errors']} "
                f"baseline={base_before['errors'] + base_after['errors']}; "
                f"bills paid by the peak run {paid}/{ours['requests']}; " + "; ".join(lights)
            ),
        )
    ]
