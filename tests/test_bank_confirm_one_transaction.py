"""A bank confirmation without a prior query opens and confirms its attempt in ONE
transaction: races on the serial and on the bill must still end exactly once."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

from sqlalchemy import func, select

from billing.models import Bill, BillEvent
from channels.bank import transforms as t
from channels.money import fen_to_yuan
from gateway.state import Resources
from kernel.models import AuditEntry, OutboxMessage
from payments.models import PaymentAttempt, Receipt, Refund
from tests.payments_support import bank_confirm, bill_for_test

CHANNEL = "bank:102"


def _msg(code: str, serial: str, amount: int) -> dict[str, str]:
    return {
        "payment_code": code,
        "bank_serial": serial,
        "amount": fen_to_yuan(amount),
        "paid_at": t.format_time(datetime.now(UTC)),
        "pay_mode": "app",
    }


async def _count(res: Resources, model: type, *where: object) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


async def test_twenty_concurrent_repeats_of_one_serial_make_one_payment(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=8_800)
    serial = f"102{secrets.token_hex(8)}"
    ctx = res.payment_context()

    answers = await asyncio.gather(
        *[bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, serial, 8_800)) for _ in range(20)]
    )

    assert {a.code for a in answers} == {"00000"}
    assert {a.data["disposition"] for a in answers if a.data} == {"PAID"}
    receipt_ids = {a.data["receipt_id"] for a in answers if a.data}
    assert len(receipt_ids) == 1
    assert None not in receipt_ids
    assert await _count(res, PaymentAttempt, PaymentAttempt.bill_id == bill.id) == 1
    assert await _count(res, Receipt, Receipt.bill_id == bill.id) == 1
    assert await _count(res, Refund) == 0
    assert await _count(res, BillEvent, BillEvent.to_status == "PAID") == 1
    assert await _count(res, AuditEntry, AuditEntry.action == "payment.confirmed") == 1
    assert await _count(res, OutboxMessage, OutboxMessage.topic == "webhook.event") == 1
    assert await _count(res, OutboxMessage, OutboxMessage.topic == "enote.issue") == 1
    async with res.sessions() as s:
        paid = await s.get_one(Bill, bill.id)
        attempt = await s.scalar(select(PaymentAttempt).where(PaymentAttempt.bill_id == bill.id))
    assert (paid.status, paid.paid_amount) == ("PAID", 8_800)
    assert attempt is not None
    assert (attempt.status, attempt.channel_trade_no) == ("SUCCEEDED", serial)


async def test_ten_concurrent_serials_for_one_bill_one_paid_nine_refunded(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_000)
    ctx = res.payment_context()

    answers = await asyncio.gather(
        *[
            bank_confirm(ctx, CHANNEL, _msg(bill.payment_code, f"102{secrets.token_hex(8)}", 5_000))
            for _ in range(10)
        ]
    )

    assert {a.code for a in answers} == {"00000"}
    dispositions = sorted(a.data["disposition"] for a in answers if a.data)
    assert dispositions == ["PAID"] + ["REFUND"] * 9
    assert await _count(res, Receipt, Receipt.kind == "PAYMENT") == 1
    assert await _count(res, Receipt, Receipt.kind == "DUPLICATE") == 9
    assert await _count(res, Refund, Refund.amount == 5_000) == 9
    assert await _count(res, OutboxMessage, OutboxMessage.topic == "refund.execute") == 9
    assert await _count(res, AuditEntry, AuditEntry.action == "payment.duplicate") == 9


async def test_wrong_amount_without_a_query_records_nothing(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_000)

    answer = await bank_confirm(
        res.payment_context(), CHANNEL, _msg(bill.payment_code, "102WRONGAMOUNT", 4_999)
    )

    assert answer.code == "12004"
    assert await _count(res, PaymentAttempt) == 0
    assert await _count(res, Receipt) == 0
    assert await _count(res, OutboxMessage) == 0
