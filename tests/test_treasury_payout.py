"""A refund after settlement (退库) reaches the citizen: the payee's account is captured,
the payout instruction lists it once its batches are exported, and the refund completes
only when finance confirms the transfer — refunds payable back to zero."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

import ledger
from billing.models import Bill
from gateway.cli import main
from gateway.state import Resources
from kernel.audit import AuditEntry
from kernel.models import OutboxMessage
from kernel.staff import create_staff
from payments.models import Receipt, Refund
from settlement import treasury
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

ACCOUNT = "6222021234567890123"
PAYEE = {"name": "张三", "account": ACCOUNT, "bank": "工商银行杭州分行"}


async def _settled(res: Resources) -> Receipt:
    async with res.sessions() as s:
        await seed_treasuries(s)
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        receipt = (await paid_bill(s, agency, item, 5000))[2]
        await s.commit()
    await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=[line_for(receipt)],
        today=DAY + timedelta(days=1),
    )
    async with res.sessions() as s:
        await treasury.settle(s, day=DAY, actor="wang")
        await s.commit()
    return receipt


async def _settle_and_export(res: Resources) -> None:
    async with res.sessions() as s:
        result = await treasury.settle(s, day=DAY, actor="wang")
        await s.commit()
        assert result.refunds == 1
        for batch_id in result.batches:
            await treasury.export_batch(s, batch_id, actor="wang")
        await s.commit()


async def _invoke(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def test_treasury_refund_is_paid_out_only_when_the_transfer_is_confirmed(
    res: Resources, client: AsyncTestClient[Litestar], tmp_path: Path
) -> None:
    receipt = await _settled(res)
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    fin = {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] = {"receipt_id": str(receipt.id), "amount": 1500, "reason": "overpaid"}

    missing = await client.post("/v1/settlement/refunds", headers=fin, json=body)
    assert (missing.status_code, missing.json()["code"]) == (422, "payee_required")
    bad = await client.post(
        "/v1/settlement/refunds", headers=fin, json={**body, "payee": {**PAYEE, "account": "x1"}}
    )
    assert bad.status_code == 422
    made = await client.post("/v1/settlement/refunds", headers=fin, json={**body, "payee": PAYEE})
    assert made.status_code == 201, made.text
    assert made.json()["route"] == "TREASURY"
    refund_id = uuid.UUID(made.json()["id"])
    async with res.sessions() as s:
        stored = await s.get_one(Refund, refund_id)
        assert stored.payee_enc is not None
        assert ACCOUNT.encode() not in stored.payee_enc  # personal data, encrypted at rest

    # Not due before its batches are exported.
    early = await client.post(
        f"/v1/settlement/refunds/{refund_id}/payout", headers=fin, json={"reference": "TX-1"}
    )
    assert (early.status_code, early.json()["code"]) == (409, "payout_not_due")
    assert (await client.get("/v1/settlement/payouts", headers=fin)).text.count("\n") == 1

    await _settle_and_export(res)
    async with res.sessions() as s:
        assert (await s.get_one(Refund, refund_id)).status == "PROCESSING"
        assert (await ledger.balances(s))["refunds_payable"] == -1500  # owed, not paid
    listed = await client.get("/v1/settlement/payouts", headers=fin)
    assert listed.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(listed.text)))
    assert [(r["refund_id"], r["amount"], r["payee_account"], r["payee_name"]) for r in rows] == [
        (str(refund_id), "15.00", ACCOUNT, "张三")
    ]
    # The CLI writes the same instruction.
    cli = await _invoke("payouts", "--out", str(tmp_path / "payouts.csv"))
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "payouts.csv").read_text() == listed.text

    paid = await client.post(
        f"/v1/settlement/refunds/{refund_id}/payout", headers=fin, json={"reference": "TX-1"}
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "SUCCEEDED"
    again = await client.post(
        f"/v1/settlement/refunds/{refund_id}/payout", headers=fin, json={"reference": "TX-1"}
    )
    assert again.status_code == 200
    other = await client.post(
        f"/v1/settlement/refunds/{refund_id}/payout", headers=fin, json={"reference": "TX-2"}
    )
    assert (other.status_code, other.json()["code"]) == (409, "payout_confirmed")

    async with res.sessions() as s:
        refund = await s.get_one(Refund, refund_id)
        bill = await s.get_one(Bill, receipt.bill_id)
        balances = await ledger.balances(s)
        topics = set((await s.scalars(select(OutboxMessage.topic))).all())
        actions = set((await s.scalars(select(AuditEntry.action))).all())
    assert (refund.status, refund.payout_ref, refund.paid_out_by) == ("SUCCEEDED", "TX-1", "wang")
    assert (bill.status, bill.refunded_amount) == ("PARTIALLY_REFUNDED", 1500)
    assert balances["refunds_payable"] == 0
    assert {"webhook.event", "enote.red"} <= topics
    assert {"refund.payout_due", "refund.payout_confirmed"} <= actions
    assert (await client.get("/v1/settlement/payouts", headers=fin)).text.count("\n") == 1


async def test_payout_confirmed_from_the_cli(res: Resources) -> None:
    receipt = await _settled(res)
    made = await _invoke(
        "refund",
        "--receipt",
        str(receipt.id),
        "--amount",
        "5000",
        "--reason",
        "withdrawn",
        "--actor",
        "li",
        "--payee-name",
        "张三",
        "--payee-account",
        ACCOUNT,
        "--payee-bank",
        "工商银行",
    )
    assert made.exit_code == 0, made.output
    async with res.sessions() as s:
        (refund,) = (await s.scalars(select(Refund))).all()
    await _settle_and_export(res)
    done = await _invoke(
        "payout-confirm", "--refund", str(refund.id), "--reference", "TX-9", "--actor", "li"
    )
    assert done.exit_code == 0, done.output
    assert "paid out (SUCCEEDED)" in done.output
    async with res.sessions() as s:
        assert (await s.get_one(Bill, receipt.bill_id)).status == "REFUNDED"
        assert (await ledger.balances(s))["refunds_payable"] == 0
