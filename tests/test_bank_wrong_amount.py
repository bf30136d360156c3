"""A bank attempt refused for a wrong amount ends (FAILED), per the attempt machine, instead
of staying PENDING forever — refused in the bank's confirmation or found by our query."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from gateway.state import Resources
from payments.attempts import recover_attempts
from payments.models import PaymentAttempt, Receipt
from payments.states import ATTEMPT, AttemptStatus
from tests.payments_support import BankWorld, bill_for_test


async def _attempt(res: Resources, attempt_id: str) -> PaymentAttempt:
    async with res.sessions() as s:
        return await s.get_one(PaymentAttempt, uuid.UUID(attempt_id))


async def test_confirmation_refused_for_a_wrong_amount_ends_the_attempt(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=20_000)
    out = await world.customer_pays("102", bill.payment_code, amount_delta=100)
    assert out["confirms"][0]["code"] == "12004"
    attempt = await _attempt(res, out["order_id"])
    assert AttemptStatus.FAILED in ATTEMPT.targets(AttemptStatus.PENDING)
    assert (attempt.status, attempt.failure_code) == ("FAILED", "amount_differs")
    # The bill is still payable, with a fresh attempt; nothing was recorded.
    again = await world.customer_pays("102", bill.payment_code)
    assert again["confirms"][0]["code"] == "00000"
    assert again["order_id"] != out["order_id"]
    async with res.sessions() as s:
        assert [r.amount for r in (await s.scalars(select(Receipt))).all()] == [20_000]


async def test_query_finding_a_wrong_amount_ends_the_attempt(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=20_000)
    out = await world.customer_pays("102", bill.payment_code, amount_delta=100, drop_confirm=True)
    assert (await _attempt(res, out["order_id"])).status == "PENDING"
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await recover_attempts(world.ctx, now=later) == 1
    attempt = await _attempt(res, out["order_id"])
    assert (attempt.status, attempt.failure_code) == ("FAILED", "amount_differs")
    # Ended: the recovery job no longer looks at it.
    assert await recover_attempts(world.ctx, now=later + timedelta(days=2)) == 0
