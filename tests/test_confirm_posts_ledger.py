"""The exactly-once path moves the books in the same transaction as the money."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func, select

import ledger
from gateway.state import Resources
from ledger.models import JournalEntry
from payments.confirm import ConfirmOutcome, confirm_payment
from payments.models import Receipt
from tests.factories import make_agency, make_bill, make_item
from tests.settle_helpers import make_attempt


async def test_payment_and_duplicate_are_posted_once_and_the_ledger_verifies(
    res: Resources,
) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        bill = await make_bill(s, agency, [(item, 1, 20_000)])
        first = await make_attempt(s, bill, 20_000, channel="bank:102")
        second = await make_attempt(s, bill, 20_000, channel="alipay")
        await s.commit()

    async def confirm(attempt_id: object, trade_no: str) -> ConfirmOutcome:
        result = await confirm_payment(
            res.sessions,
            res.redis,
            attempt_id=attempt_id,  # type: ignore[arg-type]
            channel_trade_no=trade_no,
            amount=20_000,
            paid_at=datetime.now(UTC),
            source="test",
        )
        return result.outcome

    # Ten copies of each confirmation, all at once.
    outcomes = await asyncio.gather(
        *[confirm(first.id, "BANK-1") for _ in range(10)],
        *[confirm(second.id, "ALI-1") for _ in range(10)],
    )
    assert (
        outcomes.count(ConfirmOutcome.APPLIED) + outcomes.count(ConfirmOutcome.DUPLICATE_REFUNDING)
        == 2
    )
    async with res.sessions() as s:
        receipts = (await s.scalars(select(Receipt))).all()
        assert sorted(r.kind for r in receipts) == ["DUPLICATE", "PAYMENT"]
        duplicate = next(r for r in receipts if r.kind == "DUPLICATE")
        assert duplicate.refunded_amount == 20_000  # reserved by the refund opened with it
        entries = await s.scalar(
            select(func.count()).select_from(JournalEntry).where(JournalEntry.kind == "receipt")
        )
        assert entries == 2
        balances = await ledger.balances(s)
        assert balances[ledger.clearing("bank:102")] + balances[ledger.clearing("alipay")] == 40_000
        assert balances[ledger.REVENUE_PENDING] == -20_000
        assert balances[ledger.REFUNDS_PAYABLE] == -20_000
        report = await ledger.verify(s)
    assert report.ok, report
