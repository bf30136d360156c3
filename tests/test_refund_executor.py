"""Refund executor: claim → call → record; unknown outcomes queried; the bill follows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from billing.models import Bill, BillEvent
from channels.bank.adapter import BankAdapter
from channels.base import ChannelRegistry
from gateway import worker
from gateway.state import Resources
from kernel.audit import Actor
from kernel.models import OutboxMessage
from payments.models import Receipt, Refund
from payments.refunds import execute_refunds, recover_refunds, request_refund
from tests.payments_support import BankWorld, bill_for_test


async def _paid_bill_with_refund(res: Resources, world: BankWorld, amount: int) -> Refund:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=20_000)
    out = await world.customer_pays("102", bill.payment_code)
    assert out["confirms"][0]["data"]["disposition"] == "PAID"
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        # The guarded request reserves the amount and queues `refund.execute`.
        refund = await request_refund(
            s,
            receipt_id=receipt.id,
            amount=amount,
            reason="agency request",
            actor=Actor("agency", "test"),
        )
        await s.commit()
        return refund


async def test_full_refund_of_the_payment_moves_the_bill_and_queues_notes(
    res: Resources, world: BankWorld
) -> None:
    refund = await _paid_bill_with_refund(res, world, 20_000)

    assert await execute_refunds(world.ctx) == 1

    async with res.sessions() as s:
        bill = await s.get_one(Bill, refund.bill_id)
        assert (bill.status, bill.refunded_amount) == ("REFUNDED", 20_000)
        assert (await s.get_one(Refund, refund.id)).status == "SUCCEEDED"
        assert (await s.get_one(Receipt, refund.receipt_id)).refunded_amount == 20_000
        keys = set((await s.scalars(select(OutboxMessage.key))).all())
        assert {f"enote.red:{refund.id}", f"bill.refunded:{refund.id}"} <= keys
        events = (
            await s.scalars(select(BillEvent.to_status).where(BillEvent.bill_id == bill.id))
        ).all()
        assert list(events) == ["PAID", "REFUNDED"]


async def test_unknown_outcome_is_queried_and_resent_under_the_same_key(
    res: Resources, world: BankWorld
) -> None:
    refund = await _paid_bill_with_refund(res, world, 5_000)
    # A bank answer we cannot verify tells us nothing: the outcome is unknown.
    garbled = ChannelRegistry()
    bad = BankAdapter(bank_code="102", secret=b"not-the-secret", base_url=world.bank_url("102"))
    garbled.register(bad)
    try:
        assert await execute_refunds(replace(world.ctx, channels=garbled)) == 1
    finally:
        await bad.aclose()
    async with res.sessions() as s:
        assert (await s.get_one(Refund, refund.id)).status == "UNKNOWN"

    # The recovery job asks the bank; it never saw it, so it is sent again and succeeds.
    assert await recover_refunds(world.ctx) == 1
    async with res.sessions() as s:
        assert (await s.get_one(Refund, refund.id)).status == "SUCCEEDED"
        bill = await s.get_one(Bill, refund.bill_id)
        assert (bill.status, bill.refunded_amount) == ("PARTIALLY_REFUNDED", 5_000)
    state = await world.bank_state("102")
    assert [r["refund_id"] for r in state["refunds"]].count(str(refund.id)) == 1


async def test_unavailable_bank_leaves_the_refund_for_a_retry(
    res: Resources, world: BankWorld
) -> None:
    refund = await _paid_bill_with_refund(res, world, 1_000)
    down = ChannelRegistry()
    dead = BankAdapter(bank_code="102", secret=b"x", base_url="http://127.0.0.1:1/banks/102")
    down.register(dead)
    try:
        assert await execute_refunds(replace(world.ctx, channels=down)) == 1
    finally:
        await dead.aclose()
    async with res.sessions() as s:
        assert (await s.get_one(Refund, refund.id)).status == "PROCESSING"
        msg = await s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "refund.execute"))
        assert msg is not None
        assert msg.processed_at is None
        assert msg.available_at > datetime.now(UTC) + timedelta(seconds=30)  # leased
        await s.execute(
            OutboxMessage.__table__.update().values(available_at=datetime.now(UTC))  # type: ignore[attr-defined]
        )
        await s.commit()
    assert await execute_refunds(world.ctx) == 1
    async with res.sessions() as s:
        assert (await s.get_one(Refund, refund.id)).status == "SUCCEEDED"


async def test_the_worker_runs_the_payment_jobs(res: Resources) -> None:
    names = {job.name for job in worker.default_jobs()}
    assert {"payments.recover", "refunds.execute", "refunds.recover"} <= names
    handled = await worker.run_once(res)
    assert handled["payments.recover"] == 0
    assert handled["refunds.execute"] == 0
