"""Builders for e-note tests: paid bills with their attempt, receipt and outbox message."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Agency, Bill, RevenueItem
from kernel import outbox
from payments.models import PaymentAttempt, Receipt, Refund
from tests.factories import make_agency, make_bill, make_item


async def paid_bill(
    session: AsyncSession,
    agency: Agency,
    lines: list[tuple[RevenueItem, int, int]],
    *,
    late_fee: int = 0,
    channel: str = "alipay",
    enqueue: bool = True,
) -> tuple[Bill, Receipt]:
    bill = await make_bill(session, agency, lines, status="PAID")
    receipt = await add_receipt(session, bill, late_fee=late_fee, channel=channel, enqueue=enqueue)
    return bill, receipt


async def add_receipt(
    session: AsyncSession,
    bill: Bill,
    *,
    kind: str = "PAYMENT",
    late_fee: int = 0,
    channel: str = "alipay",
    enqueue: bool = True,
) -> Receipt:
    now = datetime.now(UTC)
    amount = bill.principal_amount + late_fee
    attempt = PaymentAttempt(
        bill_id=bill.id,
        channel=channel,
        mode="qr",
        status="SUCCEEDED",
        amount=amount,
        expires_at=now + timedelta(hours=1),
    )
    session.add(attempt)
    await session.flush()
    receipt = Receipt(
        bill_id=bill.id,
        attempt_id=attempt.id,
        channel=channel,
        channel_trade_no=uuid.uuid4().hex,
        kind=kind,
        amount=amount,
        late_fee_amount=late_fee,
        paid_at=now,
        business_date=date.today(),  # noqa: DTZ011 - any day will do here
    )
    session.add(receipt)
    await session.flush()
    if enqueue:
        # What the payment flow does in the transaction that records the receipt.
        await outbox.enqueue(
            session, "enote.issue", f"enote.issue:{receipt.id}", {"receipt_id": str(receipt.id)}
        )
    return receipt


async def succeeded_refund(
    session: AsyncSession, receipt: Receipt, amount: int, *, enqueue: bool = True
) -> Refund:
    refund = Refund(
        receipt_id=receipt.id,
        bill_id=receipt.bill_id,
        amount=amount,
        route="CHANNEL",
        status="SUCCEEDED",
        reason="重复缴款退付",
        requested_by_type="agency",
        requested_by_id="test",
        completed_at=datetime.now(UTC),
    )
    session.add(refund)
    await session.flush()
    if enqueue:
        await outbox.enqueue(
            session, "enote.red", f"enote.red:{refund.id}", {"refund_id": str(refund.id)}
        )
    return refund


async def agency_with_items(session: AsyncSession) -> tuple[Agency, RevenueItem, RevenueItem]:
    fine = await make_item(session)
    fee = await make_item(
        session,
        "103040101001-02",
        name="考试报名费",
        category="EXAM_FEE",
        budget_subject="103040101001",
    )
    agency = await make_agency(session, items=[fine, fee])
    return agency, fine, fee
