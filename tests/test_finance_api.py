"""Finance API: staff tokens, finance vs auditor roles, day view, actions, batches, totals."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from gateway.state import Resources
from kernel.models import AuditEntry
from kernel.staff import create_staff
from settlement.reconcile import reconcile
from tests.factories import make_agency, make_item
from tests.settle_helpers import (
    DAY,
    ledger_verified,  # noqa: F401 - fixture, used below
    line_for,
    paid_bill,
    seed_treasuries,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")

Client = AsyncTestClient[Litestar]


async def _tokens(res: Resources) -> dict[str, str]:
    async with res.sessions() as s:
        _, finance = await create_staff(s, name="wang", role="finance")
        _, auditor = await create_staff(s, name="zhao", role="auditor")
        await s.commit()
    return {"finance": finance, "auditor": auditor}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _reconciled_day(res: Resources) -> dict[str, Any]:
    async with res.sessions() as s:
        await seed_treasuries(s)
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        a = (await paid_bill(s, agency, item, 1234))[2]
        b = (await paid_bill(s, agency, item, 5000))[2]
        await s.commit()
    await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=[line_for(a), line_for(b, amount=4999)],
        today=DAY + timedelta(days=1),
    )
    return {"a": a, "b": b}


async def test_tokens_and_roles(client: Client, res: Resources) -> None:
    tokens = await _tokens(res)
    url = f"/v1/settlement/days/{DAY.isoformat()}"
    missing = await client.get(url)
    assert (missing.status_code, missing.json()["code"]) == (401, "token_required")
    forged = await client.get(url, headers=_auth("pgs_forged"))
    assert (forged.status_code, forged.json()["code"]) == (401, "invalid_token")
    assert (await client.get(url, headers=_auth(tokens["auditor"]))).status_code == 200
    denied = await client.post(f"{url}/settle", headers=_auth(tokens["auditor"]))
    assert (denied.status_code, denied.json()["code"]) == (403, "read_only_role")
    async with res.sessions() as s:
        stored = (await s.scalars(select(AuditEntry.detail))).all()
    assert all(tokens["finance"] not in str(d) for d in stored)


async def test_day_view_actions_batches_and_totals(client: Client, res: Resources) -> None:
    tokens = await _tokens(res)
    fin, aud = _auth(tokens["finance"]), _auth(tokens["auditor"])
    receipts = await _reconciled_day(res)
    day = await client.get(f"/v1/settlement/days/{DAY.isoformat()}", headers=aud)
    body = day.json()
    assert body["channels"]["alipay"]["reconciliation"]["counts"]["matched"] == 1
    assert body["discrepancies"] == [
        {"channel": "alipay", "class": "AMOUNT_MISMATCH", "status": "OPEN", "count": 1}
    ]
    listed = await client.get(
        "/v1/settlement/discrepancies",
        params={"date": DAY.isoformat(), "status": "open"},
        headers=aud,
    )
    (d,) = listed.json()
    assert (d["our_amount"], d["channel_amount"]) == (5000, 4999)
    bad = await client.post(
        f"/v1/settlement/discrepancies/{d['id']}/actions",
        json={"decision": "RESOLVED", "action": "guess"},
        headers=fin,
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "unknown_action")
    ok = await client.post(
        f"/v1/settlement/discrepancies/{d['id']}/actions",
        json={
            "decision": "RESOLVED",
            "action": "channel_corrected",
            "note": "bank confirmed 50.00",
        },
        headers=fin,
    )
    assert ok.status_code == 200, ok.text
    assert (ok.json()["status"], ok.json()["resolved_by"]) == ("RESOLVED", "wang")
    settled = await client.post(f"/v1/settlement/days/{DAY.isoformat()}/settle", headers=fin)
    assert settled.status_code == 200, settled.text
    assert settled.json()["total"] == 1234 + 5000
    (batch_id,) = settled.json()["batches"]
    early = await client.get(f"/v1/settlement/batches/{batch_id}/download", headers=aud)
    assert (early.status_code, early.json()["code"]) == (409, "batch_not_exported")
    exported = await client.post(f"/v1/settlement/batches/{batch_id}/export", headers=fin)
    assert exported.status_code == 200
    csv_ = await client.get(f"/v1/settlement/batches/{batch_id}/download", headers=aud)
    assert csv_.headers["x-content-sha256"] == exported.json()["content_hash"]
    assert csv_.text.splitlines()[0].endswith(",1,62.34")
    xml = await client.get(
        f"/v1/settlement/batches/{batch_id}/download", params={"format": "xml"}, headers=aud
    )
    assert b'Total="62.34"' in xml.content
    codes = await client.get(f"/v1/settlement/batches/{batch_id}/lines/1/codes", headers=aud)
    assert len(codes.json()) == 2
    totals = await client.get(
        "/v1/settlement/totals",
        params={"group_by": "channel", "from": DAY.isoformat(), "to": DAY.isoformat()},
        headers=aud,
    )
    assert totals.json() == [{"key": "alipay", "count": 2, "amount": 6234, "refunded": 0}]
    refund = await client.post(
        "/v1/settlement/refunds",
        headers=fin,
        json={"receipt_id": str(receipts["a"].id), "amount": 1235, "reason": "too much"},
    )
    assert (refund.status_code, refund.json()["code"]) == (422, "exceeds_available")
    refund = await client.post(
        "/v1/settlement/refunds",
        headers=fin,
        json={
            "receipt_id": str(receipts["a"].id),
            "amount": 1234,
            "reason": "withdrawn",
            "payee": {"name": "张三", "account": "6222021234567890123", "bank": "工商银行"},
        },
    )
    assert refund.status_code == 201
    assert refund.json()["route"] == "TREASURY"
    async with res.sessions() as s:
        actions = set((await s.scalars(select(AuditEntry.action))).all())
    assert {
        "discrepancy.resolved",
        "settlement.create",
        "deposit_batch.export",
        "refund.request",
    } <= actions
