"""Confirmations grouped into one statement: GroupCommit itself, and the payments it makes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

import ledger
from billing.models import Bill
from gateway.db import create_engine, session_factory
from gateway.settings import Settings
from gateway.state import Resources
from kernel.clock import business_date
from kernel.group_commit import GroupCommit
from kernel.models import OutboxMessage
from ledger.models import JournalEntry, JournalLine
from payments.confirm import APPLY_GROUPS, ConfirmOutcome, confirm_payment
from payments.models import Receipt, Refund
from tests.payments_support import bill_for_test, open_attempt

# ------------------------------------------------------------------ GroupCommit


def _recorder(delay: float = 0.01) -> tuple[list[list[int]], GroupCommit[int, int]]:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(delay)
        return [i * 10 for i in items]

    return batches, GroupCommit(run, lanes=1, max_batch=4, key=lambda i: i % 100)


async def test_concurrent_calls_share_batches_and_get_their_own_results() -> None:
    batches, group = _recorder()
    results = await asyncio.gather(*(group.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    # One lane: the first call runs alone only if nobody queued before the lane started;
    # everything else waits for the lane and goes in batches of at most max_batch.
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len(b) <= 4 for b in batches)
    assert len(batches) == 3


async def test_a_call_alone_runs_at_once() -> None:
    batches, group = _recorder()
    assert await group.submit(7) == 70
    assert batches == [[7]]


async def test_two_items_with_one_key_never_share_a_batch() -> None:
    batches, group = _recorder()
    results = await asyncio.gather(*(group.submit(i) for i in (1, 101, 2, 201)))
    assert results == [10, 1010, 20, 2010]
    for b in batches:
        keys = [i % 100 for i in b]
        assert len(keys) == len(set(keys)), b


async def test_a_failed_batch_fails_its_callers_only() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ValueError("first batch")
        return items

    group: GroupCommit[int, int] = GroupCommit(run, lanes=1, max_batch=2)
    results = await asyncio.gather(*(group.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == [2, 3]


# ------------------------------------------------------------------ confirmations


async def _open_attempt(res: Resources, bill: Bill, channel: str = "alipay") -> uuid.UUID:
    return (await open_attempt(res.sessions, bill, channel=channel)).id


async def _bills(res: Resources, n: int) -> list[Bill]:
    out = []
    async with res.sessions() as s:
        for _ in range(n):
            out.append((await bill_for_test(s))[2])
    return out


async def test_concurrent_payments_of_many_bills_go_in_batches(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with res.sessions() as s:
        await ledger.account_ids(s, ["clearing:alipay", ledger.REVENUE_PENDING])
        await s.commit()
    bills = await _bills(res, 24)
    attempts = [await _open_attempt(res, b) for b in bills]
    sizes: list[int] = []
    run = APPLY_GROUPS._run

    async def counting(batch: list[object]) -> list[object]:
        sizes.append(len(batch))
        return await run(batch)  # type: ignore[arg-type]

    monkeypatch.setattr(APPLY_GROUPS, "_run", counting)
    paid_at = datetime.now(UTC).replace(microsecond=123456)
    results = await asyncio.gather(
        *(
            confirm_payment(
                res.sessions,
                res.redis,
                attempt_id=a,
                channel_trade_no=f"2026{i:024d}",
                amount=b.principal_amount,
                paid_at=paid_at,
                source="notify:alipay",
                channel="alipay",
            )
            for i, (a, b) in enumerate(zip(attempts, bills, strict=True))
        )
    )
    assert [r.outcome for r in results] == [ConfirmOutcome.APPLIED] * 24
    assert sum(sizes) == 24
    assert max(sizes) > 1  # they really shared statements
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 24
        paid = await s.scalar(select(func.count()).where(Bill.status == "PAID"))
        assert paid == 24
        entries = (await s.scalars(select(JournalEntry))).all()
        assert sorted(e.ref for e in entries) == sorted(str(r.receipt_id) for r in results)
        lines = (await s.execute(select(JournalLine.entry_id, JournalLine.amount))).all()
        assert len(lines) == 48
        assert sum(amount for _, amount in lines) == 0
        # Each bill's webhook carries its own facts, as the general path writes them.
        first, bill = results[0], bills[0]
        hook = await s.scalar(
            select(OutboxMessage).where(OutboxMessage.key == f"bill.paid:{first.receipt_id}")
        )
        assert hook is not None
        assert hook.payload == {
            "event": "bill.paid",
            "agency_id": str(bill.agency_id),
            "bill_id": str(bill.id),
            "data": {
                "agency_bill_no": bill.agency_bill_no,
                "payment_code": bill.payment_code,
                "amount": bill.principal_amount,
                "late_fee": 0,
                "channel": "alipay",
                "attempt_id": str(attempts[0]),
                "receipt_id": str(first.receipt_id),
                "paid_at": paid_at.isoformat(),
                "business_date": business_date(paid_at).isoformat(),
            },
        }
        enote = await s.scalar(
            select(OutboxMessage.payload).where(
                OutboxMessage.key == f"enote.issue:{first.receipt_id}"
            )
        )
        assert enote == {"receipt_id": str(first.receipt_id)}


async def test_two_channels_paying_one_bill_in_one_batch(res: Resources) -> None:
    """Both pass the guards of one statement; the unique index refuses the pair, and each
    payment's general path answers it: one pays the bill, the other is refunded."""
    async with res.sessions() as s:
        await ledger.account_ids(
            s, ["clearing:alipay", "clearing:bank:102", ledger.REVENUE_PENDING]
        )
        await s.commit()
    (bill,) = await _bills(res, 1)
    a1 = await _open_attempt(res, bill, "alipay")
    a2 = await _open_attempt(res, bill, "bank:102")
    results = await asyncio.gather(
        *(
            confirm_payment(
                res.sessions,
                res.redis,
                attempt_id=a,
                channel_trade_no=f"T-{a.hex[:12]}",
                amount=bill.principal_amount,
                paid_at=datetime.now(UTC),
                source="test",
                channel=ch,
            )
            for a, ch in ((a1, "alipay"), (a2, "bank:102"))
        )
    )
    assert sorted(r.outcome for r in results) == sorted(
        [ConfirmOutcome.APPLIED, ConfirmOutcome.DUPLICATE_REFUNDING]
    )
    async with res.sessions() as s:
        kinds = sorted((await s.scalars(select(Receipt.kind))).all())
        assert kinds == ["DUPLICATE", "PAYMENT"]
        assert await s.scalar(select(func.count()).select_from(Refund)) == 1


async def test_a_dropped_connection_falls_back_to_the_general_path(settings: Settings) -> None:
    """The grouped path runs on the driver connection, outside SQLAlchemy's error handling:
    a connection the server ended while idle is put out of the pool there, and the payment
    is made by the general path on another connection, once."""
    assert settings.database.url
    engine = create_engine(settings.database.url)
    sessions = session_factory(engine)
    try:
        async with sessions() as s:
            await ledger.account_ids(s, ["clearing:alipay", ledger.REVENUE_PENDING])
            _, _, bill = await bill_for_test(s)
        attempt = await open_attempt(sessions, bill, channel="alipay")
        async with engine.connect() as conn:  # the pool's only idle connection
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        killer = create_engine(settings.database.url)
        try:
            async with killer.connect() as other:
                assert await other.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        finally:
            await killer.dispose()
        result = await confirm_payment(
            sessions,
            None,
            attempt_id=attempt.id,
            channel_trade_no=f"T-{attempt.id.hex[:20]}",
            amount=bill.principal_amount,
            paid_at=datetime.now(UTC),
            source="notify:alipay",
            channel="alipay",
        )
        assert result.outcome == ConfirmOutcome.APPLIED
        async with sessions() as s:
            n = await s.scalar(
                select(func.count()).select_from(Receipt).where(Receipt.bill_id == bill.id)
            )
            assert n == 1
    finally:
        await engine.dispose()
