"""Treasury settlement: split by level, batches whose details sum to the header, export,
refunds before (channel) and after (treasury) settlement."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import timedelta
from xml.etree import ElementTree as ET

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

import ledger
from billing.models import Bill, BillEvent
from channels.base import StatementKind, StatementLine
from gateway.state import Resources
from kernel.audit import Actor
from kernel.errors import Conflict, InvalidInput
from kernel.models import OutboxMessage
from payments import refunds
from payments.models import Receipt, Refund
from settlement import payouts, treasury
from settlement.models import BatchedRefund, DepositBatch, DepositLine, StatementFile
from settlement.reconcile import reconcile
from tests.factories import make_agency, make_bill, make_item
from tests.settle_helpers import (
    DAY,
    at,
    ledger_verified,  # noqa: F401 - fixture, used below
    line_for,
    make_attempt,
    paid_bill,
    record_receipt,
    seed_treasuries,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")

FINANCE = Actor("finance", "finance-wang")
PAYEE = refunds.Payee(name="张三", account="6222021234567890123", bank="工商银行杭州分行")


async def _verify(res: Resources) -> None:
    async with res.sessions() as s:
        report = await ledger.verify(s)
    assert report.ok, report


async def _scenario(res: Resources) -> dict[str, Receipt]:
    async with res.sessions() as s:
        await seed_treasuries(s)
        shared = await make_item(
            s, "SHARED", budget_subject="103040101001", split={2: 3333, 3: 3333, 4: 3334}
        )
        fine = await make_item(s, "FINE", budget_subject="103050101001", split={3: 10000})
        agency = await make_agency(s, items=[shared, fine])
        out: dict[str, Receipt] = {}
        _, _, out["plain"] = await paid_bill(s, agency, shared, 10001)
        _, _, out["late"] = await paid_bill(s, agency, fine, 20000, late_fee=600)
        multi = await make_bill(s, agency, [(shared, 2, 3333), (fine, 1, 5000)])
        attempt = await make_attempt(s, multi, 11666)
        out["multi"] = await record_receipt(
            s, multi, attempt, amount=11666, paid_at=at(), trade_no="2026MULTI"
        )
        _, _, out["partly"] = await paid_bill(s, agency, shared, 9999)
        _, _, out["held"] = await paid_bill(s, agency, fine, 7000)
        await s.commit()
    # A partial channel refund before settlement, completed.
    async with res.sessions() as s:
        r = await refunds.request_refund(
            s, receipt_id=out["partly"].id, amount=3333, reason="partial", actor=FINANCE
        )
        await refunds.mark_processing(s, r.id)
        await refunds.complete_refund(s, r.id, succeeded=True, when=at(hh=16))
        await s.commit()
    lines = [line_for(r) for k, r in out.items() if k != "held"]
    # The channel lists the refund too, as a negative row.
    lines.append(
        StatementLine(
            "2026REF",
            str(out["partly"].attempt_id),
            StatementKind.REFUND,
            -3333,
            0,
            at(hh=16),
            refund_id=str(r.id),
        )
    )
    await reconcile(
        res.sessions, channel="alipay", day=DAY, lines=lines, today=DAY + timedelta(days=1)
    )
    return out


async def test_settle_a_reconciled_day_into_batches(res: Resources) -> None:
    out = await _scenario(res)
    async with res.sessions() as s:
        result = await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
    expected = 10001 + 20600 + 11666 + (9999 - 3333)
    assert (result.receipts, result.total) == (4, expected)
    async with res.sessions() as s:
        batches = await treasury.day_batches(s, DAY)
        totals = {}
        for b in batches:
            lines = (await s.scalars(select(DepositLine).where(DepositLine.batch_id == b.id))).all()
            assert sum(ln.amount for ln in lines) == b.total
            assert len(lines) == b.line_count
            totals[b.treasury_code] = {ln.budget_subject: ln.amount for ln in lines}
        assert sum(b.total for b in batches) == expected
        # Fine subject goes to level 3 whole (20600 incl. late fee + 5000 of the multi bill);
        # the shared subject's 10001 + 6666 + 6666 = 23333 splits 7777/7777/7779.
        assert totals == {
            "33010002": {"103040101001": 7777},
            "33010003": {"103040101001": 7777, "103050101001": 25600},
            "33010004": {"103040101001": 7779},
        }
        statuses = dict((await s.execute(select(Receipt.id, Receipt.status))).all())
        assert statuses[out["held"].id] == "CONFIRMED"
        assert [statuses[out[k].id] for k in ("plain", "late", "multi", "partly")] == [
            "SETTLED"
        ] * 4
        bills = dict((await s.execute(select(Bill.id, Bill.status))).all())
        assert bills[out["plain"].bill_id] == "SETTLED"
        assert bills[out["held"].bill_id] == "PAID"
        events = await s.scalar(
            select(func.count()).select_from(BillEvent).where(BillEvent.to_status == "SETTLED")
        )
        assert events == 4
        balances = await ledger.balances(s)
    # What is left in clearing is the one receipt the channel has not listed yet.
    assert balances["clearing:alipay"] == 7000
    assert balances["revenue_pending"] == -7000
    assert balances["treasury:33010003"] == -(7777 + 25600)
    await _verify(res)
    # Nothing new is ready: a re-run settles nothing.
    async with res.sessions() as s:
        again = await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
    assert again.settlement_id is None


async def test_export_is_deterministic_hashed_and_immutable(res: Resources) -> None:
    await _scenario(res)
    async with res.sessions() as s:
        await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
        batch = (await treasury.day_batches(s, DAY))[1]
    async with res.sessions() as s:
        first = await treasury.export_batch(s, batch.id, actor="finance-wang")
        await s.commit()
    async with res.sessions() as s:
        second = await treasury.export_batch(s, batch.id, actor="finance-wang")
    assert (first.csv, first.xml, first.content_hash) == (
        second.csv,
        second.xml,
        second.content_hash,
    )
    rows = list(csv.reader(io.StringIO(first.csv.decode())))
    header, details = rows[0], rows[1:]
    assert header[0] == "H"
    assert header[3] == "33010003"
    assert header[7] == str(len(details))
    assert sum(int(d[5].replace(".", "")) for d in details) == int(header[8].replace(".", ""))
    xml = ET.fromstring(first.xml)
    assert xml.find("Header").get("Total") == header[8]  # type: ignore[union-attr]
    assert len(xml.findall("Detail")) == len(details)
    for sql in (
        f"UPDATE deposit_lines SET amount = amount + 1 WHERE batch_id = '{batch.id}'",
        f"UPDATE deposit_batches SET status = 'DRAFT' WHERE id = '{batch.id}'",
        f"DELETE FROM deposit_lines WHERE batch_id = '{batch.id}'",
    ):
        async with res.sessions() as s:
            with pytest.raises(DBAPIError, match="immutable"):
                await s.execute(text(sql))
    async with res.sessions() as s:
        assert (await ledger.balances(s))["treasury:33010003"] == 0
    await _verify(res)


async def test_refund_guard_idempotency_and_treasury_refund_after_settlement(
    res: Resources,
) -> None:
    out = await _scenario(res)
    plain = out["plain"]
    async with res.sessions() as s:
        await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
    refund_id = uuid.uuid4()
    async with res.sessions() as s:
        with pytest.raises(InvalidInput) as exc:
            await refunds.request_refund(
                s, receipt_id=plain.id, amount=10002, reason="x", actor=FINANCE, payee=PAYEE
            )
        assert exc.value.code == "exceeds_available"
        with pytest.raises(InvalidInput) as exc:  # settled: paid by transfer, to whom?
            await refunds.request_refund(
                s, receipt_id=plain.id, amount=1, reason="x", actor=FINANCE
            )
        assert exc.value.code == "payee_required"
    async with res.sessions() as s:
        r = await refunds.request_refund(
            s,
            receipt_id=plain.id,
            amount=4000,
            reason="overpaid",
            actor=FINANCE,
            refund_id=refund_id,
            payee=PAYEE,
        )
        await s.commit()
        assert r.route == "TREASURY"
    async with res.sessions() as s:
        same = await refunds.request_refund(
            s,
            receipt_id=plain.id,
            amount=4000,
            reason="overpaid",
            actor=FINANCE,
            refund_id=refund_id,
        )
        assert same.id == refund_id
        with pytest.raises(Conflict):
            await refunds.request_refund(
                s, receipt_id=plain.id, amount=10, reason="x", actor=FINANCE, refund_id=refund_id
            )
        with pytest.raises(InvalidInput):  # only 6001 left after the reservation
            await refunds.request_refund(
                s, receipt_id=plain.id, amount=6002, reason="x", actor=FINANCE, payee=PAYEE
            )
    async with res.sessions() as s:
        result = await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
        assert result.refunds == 1
        assert result.receipts == 0
        refund_lines = (
            await s.scalars(select(DepositLine).where(DepositLine.kind == "REFUND"))
        ).all()
        assert sorted(ln.amount for ln in refund_lines) == [-1334, -1333, -1333]
        # The refund spans three levels' batches: it is paid only when the last is exported.
        links = (
            await s.scalars(
                select(BatchedRefund.batch_id).where(BatchedRefund.refund_id == refund_id)
            )
        ).all()
        assert sorted(links) == sorted(result.batches)
        assert len(result.batches) == 3
        for n, batch_id in enumerate(result.batches, start=1):
            await treasury.export_batch(s, batch_id, actor="finance-wang")
            await s.commit()
            status = await s.scalar(select(Refund.status).where(Refund.id == refund_id))
            # Exported is not paid: the money is back in the collection account, owed.
            assert status == "PROCESSING", n
        assert (await ledger.balances(s))["refunds_payable"] == -4000
        await payouts.confirm_payout(s, refund_id, reference="BANK-TX-1", actor="finance-wang")
        await s.commit()
    async with res.sessions() as s:
        refund = await s.get(Refund, refund_id)
        bill = await s.get(Bill, plain.bill_id)
        assert refund is not None
        assert bill is not None
        assert refund.status == "SUCCEEDED"
        assert (bill.status, bill.refunded_amount) == ("PARTIALLY_REFUNDED", 4000)
        topics = set((await s.scalars(select(OutboxMessage.topic))).all())
        balances = await ledger.balances(s)
    assert {"webhook.event", "enote.red", "refund.execute"} <= topics
    assert balances["refunds_payable"] == 0
    await _verify(res)


async def test_treasury_refunds_of_several_bills_settle_together(res: Resources) -> None:
    out = await _scenario(res)
    async with res.sessions() as s:
        await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
    async with res.sessions() as s:
        asked = [
            await refunds.request_refund(
                s,
                receipt_id=out[name].id,
                amount=amount,
                reason="overpaid",
                actor=FINANCE,
                payee=PAYEE,
            )
            for name, amount in (("plain", 4000), ("late", 500))
        ]
        await s.commit()
    assert {r.route for r in asked} == {"TREASURY"}
    async with res.sessions() as s:
        result = await treasury.settle(s, day=DAY, actor="finance-wang")
        await s.commit()
        assert result.refunds == 2
        refund_lines = (
            await s.scalars(select(DepositLine).where(DepositLine.kind == "REFUND"))
        ).all()
        assert sum(ln.amount for ln in refund_lines) == -4500  # to the fen, across levels
        for r in asked:
            linked = set(
                (
                    await s.scalars(
                        select(BatchedRefund.batch_id).where(BatchedRefund.refund_id == r.id)
                    )
                ).all()
            )
            assert linked
            assert linked <= set(result.batches)
            assert await s.scalar(select(Refund.status).where(Refund.id == r.id)) == "PROCESSING"
    await _verify(res)


async def test_settle_refuses_unconfigured_treasury_and_writes_nothing(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s, split={5: 10000})
        agency = await make_agency(s, items=[item], region_code="110100")
        r = (await paid_bill(s, agency, item, 1000))[2]
        await s.commit()
    async with res.sessions() as s:
        with pytest.raises(Conflict, match="not reconciled for alipay"):
            await treasury.settle(s, day=DAY, actor="f")
    await reconcile(res.sessions, channel="alipay", day=DAY, lines=[line_for(r)])
    async with res.sessions() as s:
        with pytest.raises(InvalidInput, match="110100/level 5"):
            await treasury.settle(s, day=DAY, actor="f")
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(DepositBatch)) == 0


async def _wait_for_lock_waiter(res: Resources) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        async with res.sessions() as s:
            waiting = await s.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("settle never waited for the receipt lock")


async def test_refund_racing_settlement_is_excluded_from_the_sweep(res: Resources) -> None:
    async with res.sessions() as s:
        await seed_treasuries(s)
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        r = (await paid_bill(s, agency, item, 1000))[2]
        await s.commit()
    await reconcile(res.sessions, channel="alipay", day=DAY, lines=[line_for(r)])
    async with res.sessions() as refunding:
        refund = await refunds.request_refund(
            refunding, receipt_id=r.id, amount=400, reason="race", actor=FINANCE
        )

        async def settle() -> treasury.SettleResult:
            async with res.sessions() as s:
                result = await treasury.settle(s, day=DAY, actor="finance-wang")
                await s.commit()
                return result

        task = asyncio.create_task(settle())
        await _wait_for_lock_waiter(res)
        await refunding.commit()
        result = await task
    assert result.total == 600
    assert refund.route == "CHANNEL"
    async with res.sessions() as s:
        await refunds.mark_processing(s, refund.id)
        await refunds.complete_refund(s, refund.id, succeeded=True)
        await s.commit()
        balances = await ledger.balances(s)
    assert balances["clearing:alipay"] == 0
    assert balances["revenue_pending"] == 0


async def test_concurrent_runs_of_one_day_serialize(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        rs = [(await paid_bill(s, agency, item, 100 + n))[2] for n in range(3)]
        await s.commit()
    lines = [line_for(r) for r in rs[:2]]
    first, second = await asyncio.gather(
        reconcile(res.sessions, channel="alipay", day=DAY, lines=list(lines)),
        reconcile(res.sessions, channel="alipay", day=DAY, lines=list(lines)),
    )
    assert sorted([first.duplicate_file, second.duplicate_file]) == [False, True]
    assert first.counts == second.counts
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(StatementFile)) == 1
