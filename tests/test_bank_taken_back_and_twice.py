"""The bank channel, over real HTTP with the simulated bank: a confirmation reversed (冲正)
after its e-note was issued and its `bill.paid` went out red-letters the note and tells the
agency `bill.payment_reversed`; a second debit under an order already paid is a payment of
its own, refunded through the bank, and its repeats answer the same."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select, text

from billing.models import Bill
from billing.webhook_delivery import ingest
from enotes.models import ENote
from enotes.service import run_issue_job, run_red_job
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.models import OutboxMessage
from payments.models import Receipt, Refund
from payments.refunds import execute_refunds
from tests.payments_support import BankWorld, bill_for_test

BANK = "102"


async def _control(world: BankWorld, action: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"{world.simulator_url}/control/{BANK}/{action}",
            json={"gateway_url": world.gateway_url, **body},
        )
        r.raise_for_status()
        return r.json()


async def test_reversal_after_the_note_and_the_webhook(
    res: Resources, world: BankWorld, settings: Settings
) -> None:
    ctx = enote_context(settings)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=8_800)
    out = await world.customer_pays(BANK, bill.payment_code)
    assert [c["code"] for c in out["confirms"]] == ["00000"]
    assert await run_issue_job(res.sessions, ctx) == 1
    await ingest(res.sessions)  # bill.paid taken for delivery

    reversed_ = await _control(world, "reverse", {"bank_serial": out["bank_serial"]})
    assert (reversed_["code"], reversed_["signature_ok"]) == ("00000", True)
    assert await run_red_job(res.sessions, ctx) == 1
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"
        notes = (
            await s.scalars(select(ENote).where(ENote.bill_id == bill.id).order_by(ENote.kind))
        ).all()
        assert [(n.kind, n.status, n.total_amount) for n in notes] == [
            ("BLUE", "RED_LETTERED", 8_800),
            ("RED", "VALID", -8_800),
        ]
        event = await s.scalar(
            select(OutboxMessage).where(OutboxMessage.key.startswith("bill.payment_reversed:"))
        )
        assert event is not None
        assert event.payload["bill_id"] == str(bill.id)
        assert event.payload["data"]["channel"] == f"bank:{BANK}"
    # Reversed again: the same answer, nothing more.
    again = await _control(world, "reverse", {"bank_serial": out["bank_serial"]})
    assert again["code"] == "00000"
    assert await run_red_job(res.sessions, ctx) == 0
    async with res.sessions() as s:
        count = await s.scalar(select(func.count()).where(ENote.bill_id == bill.id))
        assert count == 2


async def test_a_second_debit_under_a_paid_order_is_refunded(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=6_600)
    first = await world.customer_pays(BANK, bill.payment_code)
    assert first["confirms"][0]["data"]["disposition"] == "PAID"
    second = await world.customer_pays(
        BANK,
        bill.payment_code,
        skip_query=True,
        amount=6_600,
        order_id=first["order_id"],
        duplicates=1,
    )
    answers = second["confirms"]
    assert [(a["code"], a["data"]["disposition"]) for a in answers] == [("00000", "REFUND")] * 2
    assert answers[0]["data"]["receipt_id"] == answers[1]["data"]["receipt_id"]
    async with res.sessions() as s:
        kinds = dict(
            (
                await s.execute(
                    select(Receipt.kind, Receipt.channel_trade_no).where(Receipt.bill_id == bill.id)
                )
            ).all()
        )
        assert kinds == {"PAYMENT": first["bank_serial"], "DUPLICATE": second["bank_serial"]}
    assert await execute_refunds(world.ctx) == 1
    async with res.sessions() as s:
        refund = await s.scalar(select(Refund))
        assert refund is not None
        assert (refund.status, refund.amount) == ("SUCCEEDED", 6_600)
        open_ = await s.scalar(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE topic = 'refund.execute' AND processed_at IS NULL"
            )
        )
        assert open_ == 0
    state = await world.bank_state(BANK)
    assert [
        (r["bank_serial"], r["amount"])
        for r in state["refunds"]
        if r["refund_id"] == str(refund.id)
    ] == [(second["bank_serial"], 6_600)]
