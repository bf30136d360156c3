"""The day-end account check: each finding, once per day, nothing changed by it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from channels.bank import transforms as t
from channels.base import CheckedPayment as CheckLine
from channels.base import Finding as Mismatch
from channels.base import FindingKind as Finding
from channels.money import fen_to_yuan
from gateway.state import Resources
from kernel.clock import business_date
from payments.daycheck import DuplicateLine, check_day
from payments.models import DayCheck, Receipt
from settlement import reports
from tests.payments_support import bank_confirm, bill_for_test

CHANNEL = "bank:102"


async def _paid(res: Resources, serial: str, amount: int) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=amount)
    msg = {
        "payment_code": bill.payment_code,
        "bank_serial": serial,
        "amount": fen_to_yuan(amount),
        "paid_at": t.format_time(datetime.now(UTC)),
        "pay_mode": "web",
    }
    assert (await bank_confirm(res.payment_context(), CHANNEL, msg)).code == t.ResultCode.OK


async def test_day_end_check_findings_and_sent_twice(res: Resources) -> None:
    for serial, amount in [("S1", 1_000), ("S2", 2_000), ("S3", 3_000)]:
        await _paid(res, serial, amount)
    day = business_date(datetime.now(UTC))
    lines = [CheckLine("S1", 1_000), CheckLine("S2", 2_001), CheckLine("S4", 4_000)]
    result = await check_day(res.sessions, channel=CHANNEL, day=day, lines=lines, raw=b"list")
    assert not result.sent_twice
    assert result.mismatches == (
        Mismatch("S2", Finding.AMOUNT_DIFFERS, 2_000, 2_001),
        Mismatch("S3", Finding.MISSING_AT_DAY_END, 3_000, None),
        Mismatch("S4", Finding.MISSING_INTRADAY, None, 4_000),
    )
    assert (result.lines, result.total) == (3, 7_001)

    again = await check_day(res.sessions, channel=CHANNEL, day=day, lines=lines[:1], raw=b"x")
    assert again.sent_twice
    async with res.sessions() as s:
        check = await s.scalar(select(DayCheck))
        assert check is not None
        assert (check.line_count, check.total, len(check.mismatches)) == (3, 7_001, 3)
        assert await s.scalar(select(func.count()).select_from(DayCheck)) == 1
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 3
        summary = await reports.day_summary(s, day)
    assert [(c["channel"], c["lines"], len(c["mismatches"])) for c in summary["day_checks"]] == [
        (CHANNEL, 3, 3)
    ]


async def test_a_matching_list_and_a_malformed_one(res: Resources) -> None:
    await _paid(res, "M1", 1_500)
    day = business_date(datetime.now(UTC))
    with pytest.raises(DuplicateLine):
        await check_day(
            res.sessions,
            channel=CHANNEL,
            day=day,
            lines=[CheckLine("M1", 1_500), CheckLine("M1", 1_500)],
            raw=b"dup",
        )
    ok = await check_day(
        res.sessions, channel=CHANNEL, day=day, lines=[CheckLine("M1", 1_500)], raw=b"ok"
    )
    assert ok.matched
