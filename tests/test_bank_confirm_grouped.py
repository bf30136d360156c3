"""A bank's usual confirmation (no prior query) takes the grouped one-statement path: the
attempt is opened and the bill paid by `_OPEN_AND_APPLY`, shared by concurrent ones; what
its guards refuse (a repeat, a late fee, a wrong amount) goes the general path unchanged."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

import ledger
from channels.bank import transforms as t
from channels.base import PayMode
from channels.money import fen_to_yuan
from gateway.state import Resources
from kernel.clock import shanghai_today
from ledger.models import JournalLine
from payments.confirm import APPLY_GROUPS, Paying
from payments.models import PaymentAttempt, Receipt
from tests.payments_support import bank_confirm, bill_for_test

CHANNEL = "bank:102"


def _msg(code: str, serial: str, amount: int, mode: str = "counter") -> dict[str, str]:
    return {
        "payment_code": code,
        "bank_serial": serial,
        "amount": fen_to_yuan(amount),
        "paid_at": t.format_time(datetime.now(UTC)),
        "pay_mode": mode,
    }


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches that held payments opening their attempt."""
    sizes: list[int] = []
    run = APPLY_GROUPS._run

    async def counting(batch: list[tuple[object, Paying]]) -> list[object]:
        n = sum(1 for _, p in batch if p.opening is not None)
        if n:
            sizes.append(n)
        return await run(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(APPLY_GROUPS, "_run", counting)
    return sizes


async def test_concurrent_bank_confirmations_share_one_statement(
    res: Resources, opened: list[int]
) -> None:
    async with res.sessions() as s:
        await ledger.account_ids(s, [f"clearing:{CHANNEL}", ledger.REVENUE_PENDING])
        await s.commit()
    bills = []
    for i in range(16):
        async with res.sessions() as s:
            bills.append((await bill_for_test(s, amount=1_000 + i))[2])
    ctx = res.payment_context()
    serials = [f"102{secrets.token_hex(8)}" for _ in bills]
    answers = await asyncio.gather(
        *(
            bank_confirm(ctx, CHANNEL, _msg(b.payment_code, sn, b.principal_amount))
            for b, sn in zip(bills, serials, strict=True)
        )
    )
    assert {a.code for a in answers} == {t.ResultCode.OK}
    assert {a.data["disposition"] for a in answers if a.data} == {"PAID"}
    assert sum(opened) == 16
    assert max(opened) > 1  # they really shared statements
    async with res.sessions() as s:
        receipts = (await s.scalars(select(Receipt))).all()
        assert sorted((r.channel_trade_no, r.pay_mode) for r in receipts) == sorted(
            (sn, PayMode.COUNTER) for sn in serials
        )
        attempts = (await s.scalars(select(PaymentAttempt))).all()
        assert {(a.status, a.mode) for a in attempts} == {("SUCCEEDED", "COUNTER")}
        lines = (await s.execute(select(func.count(), func.sum(JournalLine.amount)))).one()
        assert tuple(lines) == (32, 0)

    # A repeat is no new payment: the guard sends it the general way, answered as before.
    again = await bank_confirm(ctx, CHANNEL, _msg(bills[0].payment_code, serials[0], 1_000))
    assert again.data is not None
    assert again.data["receipt_id"] == answers[0].data["receipt_id"]  # type: ignore[index]
    assert sum(opened) == 17  # tried, refused by the guard


async def test_a_late_fee_is_judged_by_the_general_path(res: Resources, opened: list[int]) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(
            s,
            amount=10_000,
            late_fee_rule="FINE_DAILY_3PCT",
            due_date=shanghai_today(datetime.now(UTC)) - timedelta(days=2),
        )
    ctx = res.payment_context()
    principal_only = await bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, "102LATE1", 10_000))
    assert principal_only.code == t.ResultCode.AMOUNT_DIFFERS
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 0
    with_fee = await bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, "102LATE2", 10_600))
    assert with_fee.code == t.ResultCode.OK
    assert opened == [1, 1]  # both tried the statement; its guard let neither through
