"""The pay mode travels on a bank's confirmation: a bill paid in the bank's app, its online
bank, at its counter or with e-CNY carries that mode on its receipt, its e-note and the
finance totals."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from channels.bank import transforms as t
from channels.base import PayMode
from enotes.models import ENote
from enotes.service import EnoteContext, run_issue_job
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.clock import business_date
from payments.models import Receipt
from settlement import reports
from tests.payments_support import BankWorld, bill_for_test

CASES = [
    ("app", PayMode.MOBILE_BANK, "手机银行"),
    ("web", PayMode.ONLINE_BANK, "网上银行"),
    ("counter", PayMode.COUNTER, "银行柜面"),
    ("ecny", PayMode.ECNY, "数字人民币"),
]


@pytest.fixture
def ctx(settings: Settings) -> EnoteContext:
    return enote_context(settings)


@pytest.mark.parametrize("skip_query", [False, True], ids=["queried", "confirm-only"])
async def test_each_bank_pay_mode_reaches_receipt_enote_and_totals(
    res: Resources, world: BankWorld, ctx: EnoteContext, skip_query: bool
) -> None:
    bills = {}
    for wire, mode, _ in CASES:
        async with res.sessions() as s:
            _, _, bill = await bill_for_test(s, amount=10_000 + len(bills))
        out = await world.customer_pays(
            "102",
            bill.payment_code,
            pay_mode=wire,
            skip_query=skip_query,
            amount=bill.principal_amount,
        )
        assert [c["code"] for c in out["confirms"]] == [t.ResultCode.OK]
        bills[mode] = bill

    while await run_issue_job(res.sessions, ctx):
        pass
    async with res.sessions() as s:
        for wire, mode, label in CASES:
            receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bills[mode].id))
            assert receipt is not None, wire
            assert (receipt.channel, receipt.pay_mode) == ("bank:102", mode)
            note = await s.scalar(select(ENote).where(ENote.receipt_id == receipt.id))
            assert note is not None, wire
            assert json.loads(note.content)["main"]["pay_mode"] == label
        day = business_date(datetime.now(UTC))
        by_mode = await reports.totals(s, group_by="pay_mode", start=day, end=day)
        summary = await reports.day_summary(s, day)
    assert {r["key"]: (r["count"], r["amount"]) for r in by_mode} == {
        mode.value: (1, bills[mode].principal_amount) for _, mode, _ in CASES
    }
    modes = {r["pay_mode"] for r in summary["channels"]["bank:102"]["receipts"]}
    assert modes == {mode.value for _, mode, _ in CASES}


async def test_unknown_pay_mode_is_a_parameter_error_and_writes_nothing(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_000)
    out = await world.customer_pays("102", bill.payment_code, pay_mode="carrier-pigeon")
    assert [c["code"] for c in out["confirms"]] == [t.ResultCode.PARAMETER_ERROR]
    async with res.sessions() as s:
        assert await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id)) is None


async def test_a_confirmation_without_pay_mode_is_the_banks_and_alipay_is_alipay(
    res: Resources, world: BankWorld, ctx: EnoteContext
) -> None:
    """Older messages name no mode: the receipt says BANK (银行), never a guessed one."""
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_000)
    out = await world.customer_pays("102", bill.payment_code, pay_mode="")
    assert [c["code"] for c in out["confirms"]] == [t.ResultCode.OK]
    while await run_issue_job(res.sessions, ctx):
        pass
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        assert receipt.pay_mode == PayMode.BANK
        note = await s.scalar(select(ENote).where(ENote.receipt_id == receipt.id))
        assert note is not None
        assert json.loads(note.content)["main"]["pay_mode"] == "银行"
    assert PayMode.for_channel("alipay") == PayMode.ALIPAY
    assert PayMode.for_channel("bank:103") == PayMode.BANK
