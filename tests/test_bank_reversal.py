"""A bank's reversal (冲正) of its own confirmation, the same business day: the bill is
unpaid again, the receipt reversed, the ledger mirrored — as if it never happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

import ledger
from billing.models import Bill
from channels.bank import transforms as t
from channels.money import fen_to_yuan
from gateway.state import Resources
from payments.channel_reversal import Reversal, reverse_confirmation
from payments.models import PaymentAttempt, Receipt
from tests.payments_support import bank_confirm, bill_for_test
from tests.settle_helpers import ledger_verified  # noqa: F401 - fixture, used below

pytestmark = pytest.mark.usefixtures("ledger_verified")
CHANNEL = "bank:102"


def _msg(code: str, serial: str, amount: int) -> dict[str, str]:
    return {
        "payment_code": code,
        "bank_serial": serial,
        "amount": fen_to_yuan(amount),
        "paid_at": t.format_time(datetime.now(UTC)),
        "pay_mode": "counter",
    }


async def test_reversal_the_same_day_leaves_the_bill_as_if_never_paid(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=7_700)
    ctx = res.payment_context()
    assert (await bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, "R1", 7_700))).code == "00000"

    def reverse(reference: str, amount: int = 7_700, code: str = bill.payment_code, **kw: object):  # type: ignore[no-untyped-def]
        return reverse_confirmation(
            res.sessions,
            res.redis,
            channel=CHANNEL,
            payment_code=code,
            reference=reference,
            amount=amount,
            reason="teller transaction failed",
            now=kw.get("now", datetime.now(UTC)),  # type: ignore[arg-type]
        )

    assert (await reverse("R1", amount=7_701)).outcome == Reversal.AMOUNT_DIFFERS
    assert (await reverse("NOPE")).outcome == Reversal.NOT_CONFIRMED
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert (await reverse("R1", now=tomorrow)).outcome == Reversal.TOO_LATE
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "PAID"

    done = await reverse("R1")
    assert done.outcome == Reversal.REVERSED
    again = await reverse("R1")
    assert again.outcome == Reversal.REVERSED  # a repeat answers as the first
    async with res.sessions() as s:
        paid = await s.get_one(Bill, bill.id)
        assert (paid.status, paid.paid_amount) == ("ISSUED", 0)
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        assert receipt.kind == "REVERSED"
        attempt = await s.get_one(PaymentAttempt, receipt.attempt_id)
        assert attempt.status == "REVERSED"
        balances = await ledger.balances(s)
        assert balances.get(f"clearing:{CHANNEL}", 0) == 0
        assert balances.get(ledger.REVENUE_PENDING, 0) == 0

    # The bill can be paid again, and the reversed serial cannot pay it twice.
    assert (await bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, "R2", 7_700))).code == "00000"
    repeat = await bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, "R1", 7_700))
    assert repeat.code == t.ResultCode.DUPLICATE_CONFIRMATION  # the serial names a reversed payment
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
        payments = await s.scalar(
            select(func.count()).select_from(Receipt).where(Receipt.kind == "PAYMENT")
        )
        assert payments == 1
