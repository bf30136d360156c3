"""Webhook delivery throughput: outbox → event → signed POST → recorded, vs. bare POSTs.

Ours: N events already committed to the outbox; time until the ingest job and one worker's
Deliverer have delivered and recorded all of them (claim, lease, HMAC, POST, record).
Baseline, same run, same receiver, same concurrency: N bare POSTs of the same body size
from one httpx client, with no database at all. The ratio is the price of durability.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from sqlalchemy import func, select

from bench.runner import Row, server
from kernel.audit import Actor


async def _ours(url: str, n: int, concurrency: int) -> tuple[float, int]:
    from billing import webhooks as wh
    from billing.models import Agency, WebhookEvent
    from billing.webhook_delivery import Deliverer, ingest
    from gateway.settings import Settings
    from gateway.state import Resources

    res = Resources.open(Settings.from_env())
    try:
        async with res.sessions() as s, s.begin():
            agency = Agency(credit_code=uuid.uuid4().hex[:18], name="bench", region_code="330100")
            s.add(agency)
            await s.flush()
            await wh.set_endpoint(
                s, agency.id, url, Actor(type="system", id="bench"), allow_private=True
            )
            for i in range(n):
                await wh.emit(
                    s,
                    agency_id=agency.id,
                    event="bill.paid",
                    bill_id=uuid.uuid4(),
                    data={"paid_amount": 20_000, "seq": i},
                    dedupe_key=f"bench:{agency.id}:{i}",
                )
        async with Deliverer(
            timeout_ms=10_000, max_connections=concurrency, batch_size=50, allow_private=True
        ) as d:
            started = time.perf_counter()
            while await ingest(res.sessions):
                pass
            while await d.deliver_due(res.sessions):
                pass
            elapsed = time.perf_counter() - started
        async with res.sessions() as s:
            delivered = await s.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.agency_id == agency.id, WebhookEvent.status == "DELIVERED")
            )
        return n / elapsed, int(delivered or 0)
    finally:
        await res.close()


async def _baseline(url: str, n: int, concurrency: int) -> float:
    body = b'{"created_at":"2026-11-21T20:00:00+08:00","data":{"bill_id":"' + b"x" * 36 + b'"}}'
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                (await client.post(url, content=body)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - started)


def run(*, quick: bool) -> list[Row]:
    n = 300 if quick else 2000
    concurrency = 20
    with server("bench.webhook_receiver:create_app") as port:
        url = f"http://127.0.0.1:{port}/hook"
        asyncio.run(_baseline(url, 100, concurrency))  # warm-up
        base = asyncio.run(_baseline(url, n, concurrency))
        ours, delivered = asyncio.run(_ours(url, n, concurrency))
    return [
        Row(
            scenario="webhooks",
            ours=ours,
            baseline=base,
            unit="events/s",
            goal=">= 0.3",
            notes=f"{delivered}/{n} delivered and recorded; one worker, pool {concurrency}",
        )
    ]
