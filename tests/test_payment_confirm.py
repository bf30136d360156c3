"""confirm_payment: exactly once under concurrency, duplicates refunded, late successes.

Every test runs twice: through the general path alone, and as notifications arrive (the
channel named), where the grouped one-statement path goes first and must leave to the
general path everything its guards do not cover."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import ledger
from billing import payer as bills
from billing.models import Bill, BillEvent
from gateway.state import Resources
from kernel.clock import business_date
from kernel.kv import KV
from kernel.models import AuditEntry, OutboxMessage
from payments import confirm
from payments.confirm import CONFIRM_GATE, ConfirmOutcome, ConfirmResult, core_transaction
from payments.models import PaymentAttempt, Receipt, Refund
from tests.payments_support import bill_for_test, open_attempt

_ROUTE = {"via": "general"}


@pytest.fixture(autouse=True, params=["general", "grouped"])
def _route(request: pytest.FixtureRequest) -> None:
    _ROUTE["via"] = request.param


async def confirm_payment(sessions: Any, redis: Any, **kw: Any) -> ConfirmResult:
    if _ROUTE["via"] == "grouped":
        async with sessions() as s:
            kw["channel"] = channel = await s.scalar(
                select(PaymentAttempt.channel).where(PaymentAttempt.id == kw["attempt_id"])
            )
            if channel is not None:  # the one statement posts only to existing accounts
                await ledger.account_ids(s, [ledger.clearing(channel), ledger.REVENUE_PENDING])
                await s.commit()
    return await confirm.confirm_payment(sessions, redis, **kw)


async def _attempt(res: Resources, bill: Bill, **kw: Any) -> PaymentAttempt:
    return await open_attempt(res.sessions, bill, **kw)


async def _count(res: Resources, stmt: object) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(stmt))  # type: ignore[call-overload]


async def test_twenty_concurrent_confirmations_make_one_receipt(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    attempt = await _attempt(res, bill)
    paid_at = datetime.now(UTC)

    results = await asyncio.gather(
        *[
            confirm_payment(
                res.sessions,
                res.redis,
                attempt_id=attempt.id,
                channel_trade_no="SERIAL-1",
                amount=bill.principal_amount,
                paid_at=paid_at,
                source="test",
            )
            for _ in range(20)
        ]
    )

    outcomes = [r.outcome for r in results]
    assert outcomes.count(ConfirmOutcome.APPLIED) == 1
    assert outcomes.count(ConfirmOutcome.ALREADY_CONFIRMED) == 19
    assert all(r.acknowledged for r in results)
    assert await _count(res, select(func.count()).select_from(Receipt)) == 1
    assert await _count(res, select(func.count()).select_from(Refund)) == 0
    async with res.sessions() as s:
        b = await s.get_one(Bill, bill.id)
        assert (b.status, b.paid_amount) == ("PAID", bill.principal_amount)
        events = (await s.scalars(select(BillEvent).where(BillEvent.bill_id == bill.id))).all()
        assert [(e.from_status, e.to_status) for e in events] == [("ISSUED", "PAID")]
        topics = sorted((await s.scalars(select(OutboxMessage.key))).all())
        receipt = await s.scalar(select(Receipt))
        assert receipt is not None
        assert topics == sorted([f"bill.paid:{receipt.id}", f"enote.issue:{receipt.id}"])
        assert await s.scalar(select(func.count()).select_from(AuditEntry)) == 1


async def test_twenty_concurrent_confirmations_without_redis(res: Resources) -> None:
    """Correctness rests on PostgreSQL: with Redis unreachable it is still exactly once."""
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    attempt = await _attempt(res, bill)
    dead = KV.from_url("redis://127.0.0.1:1", connect_timeout=0.2)
    try:
        results = await asyncio.gather(
            *[
                confirm_payment(
                    res.sessions,
                    dead,
                    attempt_id=attempt.id,
                    channel_trade_no=None,
                    amount=bill.principal_amount,
                    paid_at=datetime.now(UTC),
                    source="test",
                )
                for _ in range(20)
            ]
        )
    finally:
        await dead.aclose()
    assert [r.outcome for r in results].count(ConfirmOutcome.APPLIED) == 1
    assert await _count(res, select(func.count()).select_from(Receipt)) == 1


async def test_second_attempt_paid_is_a_duplicate_with_a_refund(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    first = await _attempt(res, bill, channel="bank:102")
    second = await _attempt(res, bill, channel="bank:103")
    now = datetime.now(UTC)
    kw = {"amount": bill.principal_amount, "paid_at": now, "source": "test"}
    r1 = await confirm_payment(
        res.sessions, res.redis, attempt_id=first.id, channel_trade_no="A", **kw
    )
    r2 = await confirm_payment(
        res.sessions, res.redis, attempt_id=second.id, channel_trade_no="B", **kw
    )
    again = await confirm_payment(
        res.sessions, res.redis, attempt_id=second.id, channel_trade_no="B", **kw
    )

    assert r1.outcome == ConfirmOutcome.APPLIED
    assert r2.outcome == ConfirmOutcome.DUPLICATE_REFUNDING
    assert again.outcome == ConfirmOutcome.ALREADY_CONFIRMED
    async with res.sessions() as s:
        kinds = dict((await s.execute(select(Receipt.attempt_id, Receipt.kind))).all())
        assert kinds == {first.id: "PAYMENT", second.id: "DUPLICATE"}
        refund = await s.scalar(select(Refund))
        assert refund is not None
        assert (refund.amount, refund.route, refund.reason, refund.requested_by_type) == (
            bill.principal_amount,
            "CHANNEL",
            "duplicate payment",
            "system",
        )
        assert refund.id == r2.refund_id
        msg = await s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "refund.execute"))
        assert msg is not None
        assert msg.key == f"refund.execute:{refund.id}"


async def test_confirmation_of_a_cancelled_bill_is_recorded_and_refunded(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    attempt = await _attempt(res, bill)
    async with res.sessions() as s:
        (await s.get_one(Bill, bill.id)).status = "CANCELLED"
        await s.commit()

    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="X",
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
    )

    assert result.outcome == ConfirmOutcome.DUPLICATE_REFUNDING
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "CANCELLED"
        receipt = await s.scalar(select(Receipt))
        assert receipt is not None
        assert receipt.kind == "DUPLICATE"
        assert await s.scalar(select(func.count()).select_from(Refund)) == 1


async def test_late_success_after_our_expiry_pays_a_fine(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, expires_at=datetime.now(UTC) - timedelta(days=1))
    attempt = await _attempt(res, bill, status="CLOSED")
    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="LATE",
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert result.outcome == ConfirmOutcome.APPLIED
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
        assert (await s.get_one(PaymentAttempt, attempt.id)).status == "SUCCEEDED"


async def test_late_success_for_an_exam_fee_past_its_deadline_is_refunded(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(
            s, category="EXAM_FEE", expires_at=datetime.now(UTC) - timedelta(hours=1)
        )
    attempt = await _attempt(res, bill, status="CLOSED")
    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="LATE",
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert result.outcome == ConfirmOutcome.DUPLICATE_REFUNDING
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"


async def test_wrong_amount_changes_nothing(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    attempt = await _attempt(res, bill)
    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="X",
        amount=bill.principal_amount - 1,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert result.outcome == ConfirmOutcome.REJECTED_AMOUNT
    unknown = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=uuid.uuid4(),
        channel_trade_no="X",
        amount=1,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert unknown.outcome == ConfirmOutcome.UNKNOWN_ATTEMPT
    async with res.sessions() as s:
        assert (await s.get_one(PaymentAttempt, attempt.id)).status == "PENDING"
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 0
        assert await s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


async def test_confirmation_drops_the_cached_summary(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
        view = await bills.cached_view(res.redis, s, bill.payment_code, 300)
    assert view is not None
    assert view.status == "ISSUED"
    assert await res.redis.exists(bills.cache_key(bill.payment_code))
    attempt = await _attempt(res, bill)
    await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no=None,
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert not await res.redis.exists(bills.cache_key(bill.payment_code))


def test_business_date_follows_the_shanghai_day_and_the_cutoff() -> None:
    # 16:30 UTC is 00:30 the next day in Shanghai.
    at = datetime(2026, 3, 1, 16, 30, tzinfo=UTC)
    assert business_date(at) == date(2026, 3, 2)
    # A 23:00 cutoff moves 23:30 Shanghai time to the next business day.
    late = datetime(2026, 3, 1, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
    assert business_date(late) == date(2026, 3, 1)
    assert business_date(late, time(23, 0)) == date(2026, 3, 2)


async def test_confirmations_take_turns_in_the_database(res: Resources) -> None:
    # At most CONFIRM_GATE.size confirmation transactions at once; the rest wait, and all
    # of them complete.
    size = CONFIRM_GATE.size
    CONFIRM_GATE.resize(2)
    inside = peak = 0

    async def confirmation() -> int:
        nonlocal inside, peak
        async with core_transaction(res.sessions) as conn:
            inside += 1
            peak = max(peak, inside)
            await conn.execute(select(func.pg_sleep(0.02)))
            inside -= 1
            return int((await conn.execute(select(func.txid_current()))).scalar_one())

    try:
        txids = await asyncio.gather(*(confirmation() for _ in range(10)))
    finally:
        CONFIRM_GATE.resize(size)
    assert peak == 2
    assert len(set(txids)) == 10  # ten transactions, each committed on its own
