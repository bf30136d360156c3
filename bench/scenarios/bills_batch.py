"""POST /v1/bills:batch (10,000 bills per request, signed, validated, encrypted, with
payment codes) vs. a raw asyncpg COPY of the same number of rows into the same tables
(bills, bill_lines, bill_events) in the same run. Goal: ours ≥ 0.3 × raw COPY."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.runner import PeakRSS, Row, paygate_server
from billing.bills import resident_id_check_char

BATCH = 10_000


def _resident_id(n: int) -> str:
    first17 = f"330102{19900101 + n % 28:08d}{n % 1000:03d}"
    return first17 + resident_id_check_char(first17)


async def _setup() -> tuple[uuid.UUID, str, str]:
    from billing import agencies, catalogue
    from gateway.db import create_engine, session_factory

    engine = create_engine(os.environ["DATABASE_URL"])
    try:
        async with session_factory(engine)() as s:
            await catalogue.seed_demo_items(s)
            body = f"11330100MB{secrets.randbelow(10**7):07d}"
            agency = await agencies.create_agency(
                s,
                credit_code=agencies.make_credit_code(body),
                name="bench agency",
                region_code="330100",
                item_codes=["FINE-ROAD-TRAFFIC"],
                actor="bench",
            )
            key = await agencies.create_key(s, agency.id, actor="bench")
            await s.commit()
            return agency.id, key.key_id, key.secret
    finally:
        await engine.dispose()


def _bills(run: str, start: int, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    due = (now + timedelta(days=15)).date().isoformat()
    exp = (now + timedelta(days=60)).isoformat()
    return [
        {
            "agency_bill_no": f"BENCH-{run}-{i}",
            "payer": {"type": "PERSON", "name": "张三", "id_number": _resident_id(i)},
            "lines": [{"item_code": "FINE-ROAD-TRAFFIC", "quantity": 1, "unit_amount": 20_000}],
            "due_date": due,
            "expires_at": exp,
        }
        for i in range(start, start + n)
    ]


def _post_batches(port: int, key_id: str, secret: str, batches: list[bytes]) -> float:
    from gateway.auth import authorization_header

    started = time.perf_counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        for body in batches:
            auth = authorization_header(
                key_id, secret, method="POST", path="/v1/bills:batch", query="", body=body
            )
            resp = client.post(
                "/v1/bills:batch",
                content=body,
                headers={"authorization": auth, "content-type": "application/json"},
            )
            resp.raise_for_status()
            out = resp.json()
            if out["created"] != BATCH:
                raise RuntimeError(f"batch created {out['created']} of {BATCH}")
    return time.perf_counter() - started


async def _raw_copy(agency_id: uuid.UUID, run: str, batch_no: int) -> float:
    """The same rows, pre-built, COPYed straight into the three tables."""
    from sqlalchemy.engine import make_url

    dsn = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    now = datetime.now(UTC)
    due = (now + timedelta(days=15)).date()
    exp = now + timedelta(days=60)
    blob = secrets.token_bytes(48)
    elapsed = 0.0
    try:
        for b in (batch_no,):
            ids = [uuid.uuid4() for _ in range(BATCH)]
            bills = [
                (
                    bid,
                    agency_id,
                    f"RAW-{run}-{b}-{i}",
                    blob[:32],
                    f"9{secrets.randbelow(10**19):019d}",
                    "FINE",
                    "FINE_DAILY_3PCT",
                    "ISSUED",
                    "PERSON",
                    blob,  # stands in for the encrypted name as for the encrypted ID number
                    blob,
                    blob[:32],
                    20_000,
                    due,
                    exp,
                )
                for i, bid in enumerate(ids)
            ]
            lines = [(bid, 1, "FINE-ROAD-TRAFFIC", 1, 20_000, 20_000) for bid in ids]
            events = [(bid, "ISSUED", "agency", "bench") for bid in ids]
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bills",
                    records=bills,
                    columns=[
                        "id", "agency_id", "agency_bill_no", "request_hash", "payment_code",
                        "category", "late_fee_rule", "status", "payer_type", "payer_name_enc",
                        "payer_id_enc", "payer_id_hash", "principal_amount", "due_date",
                        "expires_at",
                    ],
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "bill_lines",
                    records=lines,
                    columns=[
                        "bill_id",
                        "line_no",
                        "item_code",
                        "quantity",
                        "unit_amount",
                        "amount",
                    ],
                )
                await conn.copy_records_to_table(
                    "bill_events",
                    records=events,
                    columns=["bill_id", "to_status", "actor_type", "actor_id"],
                )
            elapsed += time.perf_counter() - started
    finally:
        await conn.close()
    return elapsed


def run(*, quick: bool) -> list[Row]:
    n_batches = 1 if quick else 3
    run_id = uuid.uuid4().hex[:8]
    ours_s = raw_s = 0.0
    with paygate_server() as (port, pid), PeakRSS(pid) as rss:
        agency_id, key_id, secret = asyncio.run(_setup())
        warm = json.dumps({"bills": _bills(f"{run_id}w", 0, 200)}).encode()
        _post_batches_warm(port, key_id, secret, warm)
        # Interleaved, so that load from elsewhere on the machine hits both sides alike.
        for b in range(n_batches):
            body = json.dumps({"bills": _bills(run_id, b * BATCH, BATCH)}, ensure_ascii=False)
            ours_s += _post_batches(port, key_id, secret, [body.encode()])
            raw_s += asyncio.run(_raw_copy(agency_id, run_id, b))
    total = n_batches * BATCH
    return [
        Row(
            scenario="bills_batch",
            ours=total / ours_s,
            baseline=total / raw_s,
            unit="bills/s",
            goal=">= 0.3",
            peak_rss_mb=rss.mb,
            notes=(
                f"{n_batches}×{BATCH} bills over HTTP (sign, validate, encrypt, codes) "
                f"in {ours_s:.2f}s vs raw COPY of bills+lines+events in {raw_s:.2f}s"
            ),
        )
    ]


def _post_batches_warm(port: int, key_id: str, secret: str, body: bytes) -> None:
    from gateway.auth import authorization_header

    auth = authorization_header(
        key_id, secret, method="POST", path="/v1/bills:batch", query="", body=body
    )
    httpx.post(
        f"http://127.0.0.1:{port}/v1/bills:batch",
        content=body,
        headers={"authorization": auth, "content-type": "application/json"},
        timeout=120,
    ).raise_for_status()
