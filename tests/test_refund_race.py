"""Concurrent refunds of one receipt never exceed what was paid, whichever door they use.

Many refund requests at once through the agency API, the finance API and the CLI, some of
them repeats of one idempotency key (a client retrying): the reservations on the receipt
add up to exactly the refunds recorded, never more than the payment, every repeat answers
the one refund of its key, and nothing answers 5xx.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from billing.models import Agency, Bill, RevenueItem
from gateway.state import Resources
from kernel.staff import create_staff
from payments.confirm import confirm_payment
from payments.models import Receipt, Refund
from tests.agency_client import AgencyClient, make_agency_with_key
from tests.factories import make_bill
from tests.servers import ServerThread
from tests.settle_helpers import (
    ledger_verified,  # noqa: F401 - fixture, used below
    make_attempt,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")

PAID = 10_000
EACH = 700
PAYGATE = str(Path(sys.executable).with_name("paygate"))


async def _paid_receipt(res: Resources) -> tuple[None, Any, uuid.UUID, uuid.UUID]:
    signed = await make_agency_with_key(res)
    async with res.sessions() as s:
        agency = await s.get_one(Agency, signed.agency_id)
        item = await s.get_one(RevenueItem, "FINE-ROAD-TRAFFIC")
        bill = await make_bill(s, agency, [(item, 1, PAID)])
        attempt = await make_attempt(s, bill, PAID)
        await s.commit()
    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="2026RACE0001",
        amount=PAID,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert result.acknowledged
    assert result.receipt_id is not None
    return None, signed, bill.id, result.receipt_id


async def _cli(receipt_id: uuid.UUID, refund_id: uuid.UUID | None = None) -> tuple[int, str]:
    """`paygate refund` in a process of its own, as a finance officer runs it."""
    args = ["refund", "--receipt", str(receipt_id), "--amount", str(EACH)]
    args += ["--reason", "race", "--actor", "li"]
    if refund_id is not None:
        args += ["--refund-id", str(refund_id)]
    proc = await asyncio.create_subprocess_exec(
        PAYGATE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_concurrent_refunds_across_every_door_never_exceed_the_payment(
    res: Resources, gateway_server: ServerThread
) -> None:
    _, signed, bill_id, receipt_id = await _paid_receipt(res)
    # Our service on a real port: the requests really run at the same time.
    client = httpx.AsyncClient(base_url=gateway_server.url, timeout=60)
    api = AgencyClient(client, signed.key_id, signed.secret)  # type: ignore[arg-type]
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    finance = {"Authorization": f"Bearer {token}"}
    agency_key, finance_key, cli_key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def agency(key: uuid.UUID | None) -> httpx.Response:
        body: dict[str, Any] = {"amount": EACH, "reason": "race"}
        if key is not None:
            body["refund_id"] = str(key)
        return await api.post(f"/v1/bills/{bill_id}/refunds", json=body)

    async def finance_api(key: uuid.UUID | None) -> httpx.Response:
        body: dict[str, Any] = {"receipt_id": str(receipt_id), "amount": EACH, "reason": "race"}
        if key is not None:
            body["refund_id"] = str(key)
        return await client.post("/v1/settlement/refunds", json=body, headers=finance)

    calls: list[Any] = []
    calls += [agency(None) for _ in range(8)] + [agency(agency_key) for _ in range(4)]
    calls += [finance_api(None) for _ in range(8)] + [finance_api(finance_key) for _ in range(4)]
    calls += [_cli(receipt_id) for _ in range(3)] + [_cli(receipt_id, cli_key) for _ in range(2)]
    async with client:
        answers = await asyncio.gather(*calls)

    http = [a for a in answers if isinstance(a, httpx.Response)]
    cli = [a for a in answers if isinstance(a, tuple)]
    assert all(r.status_code < 500 for r in http), [r.text for r in http if r.status_code >= 500]
    for r in http:
        assert r.status_code in (201, 422), r.text
        if r.status_code == 422:
            assert r.json()["code"] == "exceeds_available"
    for code, output in cli:
        assert code in (0, 1), output
        if code == 1:
            assert "exceeds_available" in output, output
    for key in (agency_key, finance_key):
        ids = {r.json()["id"] for r in http if r.status_code == 201 and r.json()["id"] == str(key)}
        assert len(ids) <= 1
    async with res.sessions() as s:
        receipt = await s.get_one(Receipt, receipt_id)
        refunds = (await s.scalars(select(Refund).where(Refund.receipt_id == receipt_id))).all()
        total = sum(r.amount for r in refunds)
        assert await s.scalar(select(func.count()).select_from(Bill)) == 1
    # Every request had EACH to refund: as many as fit were recorded, and no more.
    assert total == receipt.refunded_amount
    assert total <= PAID
    assert PAID - total < EACH
    # Each idempotency key made one refund at most, whatever the number of repeats.
    for key in (agency_key, finance_key, cli_key):
        assert sum(1 for r in refunds if r.id == key) <= 1
    # Every 201 names a refund that exists.
    assert {r.json()["id"] for r in http if r.status_code == 201} <= {str(r.id) for r in refunds}
