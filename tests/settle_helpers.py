"""Builders for settlement tests: paid bills with attempts, receipts and ledger entries."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

import ledger
from billing.models import Agency, Bill, RevenueItem
from channels.base import StatementKind, StatementLine
from gateway.state import Resources
from kernel.clock import SHANGHAI, business_date
from payments.models import PaymentAttempt, Receipt
from settlement.models import Treasury
from tests.factories import make_bill

DAY = date(2026, 11, 20)


def at(day: date = DAY, hh: int = 10, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), SHANGHAI)


async def make_attempt(
    session: AsyncSession,
    bill: Bill,
    amount: int,
    *,
    channel: str = "alipay",
    status: str = "PENDING",
    trade_no: str | None = None,
) -> PaymentAttempt:
    attempt = PaymentAttempt(
        bill_id=bill.id,
        channel=channel,
        mode="qr",
        status=status,
        amount=amount,
        channel_trade_no=trade_no,
        expires_at=datetime.now(UTC) + timedelta(hours=2),
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def record_receipt(
    session: AsyncSession,
    bill: Bill,
    attempt: PaymentAttempt,
    *,
    amount: int,
    paid_at: datetime,
    trade_no: str,
    kind: str = "PAYMENT",
    late_fee: int = 0,
) -> Receipt:
    """What the confirm path does, minimally: receipt + bill PAID + ledger, one transaction."""
    attempt.status = "SUCCEEDED"
    attempt.channel_trade_no = trade_no
    receipt = Receipt(
        bill_id=bill.id,
        attempt_id=attempt.id,
        channel=attempt.channel,
        channel_trade_no=trade_no,
        kind=kind,
        amount=amount,
        late_fee_amount=late_fee,
        paid_at=paid_at,
        business_date=business_date(paid_at),
    )
    session.add(receipt)
    if kind == "PAYMENT":
        bill.status = "PAID"
        bill.paid_amount = amount
        bill.paid_at = paid_at
    await session.flush()
    await ledger.post_receipt(
        session,
        receipt_id=receipt.id,
        kind=receipt.kind,
        channel=receipt.channel,
        amount=receipt.amount,
        business_date=receipt.business_date,
    )
    return receipt


async def paid_bill(
    session: AsyncSession,
    agency: Agency,
    item: RevenueItem,
    amount: int,
    *,
    paid_at: datetime | None = None,
    channel: str = "alipay",
    late_fee: int = 0,
) -> tuple[Bill, PaymentAttempt, Receipt]:
    bill = await make_bill(session, agency, [(item, 1, amount)])
    total = amount + late_fee
    attempt = await make_attempt(session, bill, total, channel=channel)
    receipt = await record_receipt(
        session,
        bill,
        attempt,
        amount=total,
        paid_at=paid_at or at(),
        trade_no="2026" + secrets.token_hex(10),
        late_fee=late_fee,
    )
    return bill, attempt, receipt


async def duplicate_of(session: AsyncSession, bill: Bill, amount: int) -> Receipt:
    attempt = await make_attempt(session, bill, amount)
    return await record_receipt(
        session,
        bill,
        attempt,
        amount=amount,
        paid_at=at(hh=11),
        trade_no="2026" + secrets.token_hex(10),
        kind="DUPLICATE",
    )


def line_for(receipt: Receipt, *, amount: int | None = None, fee: int = 0) -> StatementLine:
    assert receipt.channel_trade_no
    return StatementLine(
        channel_trade_no=receipt.channel_trade_no,
        attempt_id=str(receipt.attempt_id),
        kind=StatementKind.PAYMENT,
        amount=receipt.amount if amount is None else amount,
        fee=fee,
        occurred_at=receipt.paid_at,
    )


async def test_confirm(
    session: AsyncSession,
    *,
    attempt_id: uuid.UUID,
    channel: str,
    channel_trade_no: str,
    amount: int,
    paid_at: datetime,
) -> None:
    """A real (minimal) exactly-once confirmation for the auto-heal hook in tests."""
    if await session.scalar(select(Receipt.id).where(Receipt.attempt_id == attempt_id)):
        return
    attempt = await session.get(PaymentAttempt, attempt_id, with_for_update=True)
    assert attempt is not None
    assert attempt.channel == channel
    bill = await session.get(Bill, attempt.bill_id, with_for_update=True)
    assert bill is not None
    kind = "PAYMENT" if bill.status == "ISSUED" else "DUPLICATE"
    await record_receipt(
        session,
        bill,
        attempt,
        amount=amount,
        paid_at=paid_at,
        trade_no=channel_trade_no,
        kind=kind,
    )


test_confirm.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


async def seed_treasuries(session: AsyncSession, region: str = "330100") -> None:
    for level in range(1, 7):
        session.add(
            Treasury(
                region_code=region,
                budget_level=level,
                treasury_code=f"{region}{level:02d}",
                finance_org_code=f"F{region}",
                name=f"{region} level {level} treasury",
            )
        )
    await session.flush()


@pytest.fixture
async def ledger_verified(res: Resources) -> AsyncIterator[None]:
    """After the test, whatever it did: every entry balances, every balance is its lines."""
    yield
    async with res.sessions() as session:
        report = await ledger.verify(session)
    assert report.ok, report
