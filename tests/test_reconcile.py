"""Reconciliation: every discrepancy class from crafted statements, re-runs, auto-heal."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

import ledger
from channels.base import StatementKind, StatementLine
from gateway.state import Resources
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.models import AuditEntry
from ledger.models import JournalEntry
from payments.models import Receipt, Refund
from settlement.models import Discrepancy, ReconRun, StatementFile, StatementRow
from settlement.reconcile import act_on, reconcile
from tests.factories import make_agency, make_bill, make_item
from tests.settle_helpers import (
    DAY,
    at,
    duplicate_of,
    ledger_verified,  # noqa: F401 - fixture, used below
    line_for,
    make_attempt,
    paid_bill,
    test_confirm,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")


async def _discrepancies(res: Resources) -> dict[tuple[str, str], Discrepancy]:
    async with res.sessions() as s:
        rows = (await s.scalars(select(Discrepancy))).all()
    return {(d.klass, d.match_key): d for d in rows}


async def _verify(res: Resources) -> None:
    async with res.sessions() as s:
        report = await ledger.verify(s)
    assert report.ok, report


async def test_every_class_is_produced_and_classified(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        _, _, matched = await paid_bill(s, agency, item, 5000)
        _, _, platform_only = await paid_bill(s, agency, item, 6000)
        _, _, short = await paid_bill(s, agency, item, 7000)
        bill_d, _, _paid = await paid_bill(s, agency, item, 8000)
        dup_open = await duplicate_of(s, bill_d, 8000)
        bill_e, _, _paid_e = await paid_bill(s, agency, item, 9000)
        dup_refunding = await duplicate_of(s, bill_e, 9000)
        s.add(
            Refund(
                receipt_id=dup_refunding.id,
                bill_id=bill_e.id,
                amount=9000,
                route="CHANNEL",
                status="PROCESSING",
                reason="duplicate",
                requested_by_type="system",
                requested_by_id="dup",
            )
        )
        _, _, fee_wrong = await paid_bill(s, agency, item, 10000)
        # A payment we never heard about (lost notification) for an attempt we created.
        lost_bill = await make_bill(s, agency, [(item, 1, 4200)])
        lost = await make_attempt(s, lost_bill, 4200)
        # A refund the channel made that we still think is processing.
        _, _, refunded = await paid_bill(s, agency, item, 3000)
        pending_refund = Refund(
            receipt_id=refunded.id,
            bill_id=refunded.bill_id,
            amount=1000,
            route="CHANNEL",
            status="PROCESSING",
            reason="partial",
            requested_by_type="finance",
            requested_by_id="f1",
        )
        s.add(pending_refund)
        await s.commit()
        receipts = [matched, short, dup_open, dup_refunding, fee_wrong, refunded]
        receipts += [_paid, _paid_e]
    stranger = str(uuid.uuid4())
    lines = [line_for(r, fee=r.amount * 60 // 10000) for r in receipts if r is not short]
    lines = [
        ln if ln.attempt_id != str(fee_wrong.attempt_id) else line_for(fee_wrong, fee=99)
        for ln in lines
    ]
    lines += [
        line_for(short, amount=6900, fee=6900 * 60 // 10000),
        StatementLine("2026LOST", str(lost.id), StatementKind.PAYMENT, 4200, 25, at(hh=12)),
        StatementLine("2026STRANGER", stranger, StatementKind.PAYMENT, 777, 5, at(hh=13)),
        StatementLine(
            "2026R" + "0" * 8,
            str(refunded.attempt_id),
            StatementKind.REFUND,
            -1000,
            0,
            at(hh=15),
            refund_id=str(pending_refund.id),
        ),
    ]
    result = await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=lines,
        fee_rate_bp=60,
        today=DAY + timedelta(days=1),
        confirm=test_confirm,
    )
    found = await _discrepancies(res)
    by_class = {(k, d.status, d.action) for (k, _), d in found.items()}
    assert ("PLATFORM_ONLY", "HELD", None) in by_class
    assert found[("PLATFORM_ONLY", str(platform_only.attempt_id))].our_amount == 6000
    mismatch = found[("AMOUNT_MISMATCH", str(short.attempt_id))]
    assert (mismatch.our_amount, mismatch.channel_amount, mismatch.status) == (7000, 6900, "OPEN")
    # A duplicate nobody refunds yet gets its full refund opened automatically.
    opened = found[("DUPLICATE_PAYMENT", str(dup_open.attempt_id))]
    assert (opened.status, opened.action) == ("RESOLVED", "auto_refund_opened")
    async with res.sessions() as s:
        auto_refund = await s.scalar(select(Refund).where(Refund.receipt_id == dup_open.id))
    assert auto_refund is not None
    assert (auto_refund.amount, auto_refund.route, auto_refund.requested_by_type) == (
        8000,
        "CHANNEL",
        "system",
    )
    auto = found[("DUPLICATE_PAYMENT", str(dup_refunding.attempt_id))]
    assert (auto.status, auto.action, auto.resolved_by) == (
        "RESOLVED",
        "auto_refund_in_progress",
        "system",
    )
    fee = found[("FEE_MISMATCH", str(fee_wrong.attempt_id))]
    assert (fee.channel_fee, fee.expected_fee) == (99, 60)
    # The lost notification healed through the confirm hook...
    healed = found[("CHANNEL_ONLY", str(lost.id))]
    assert (healed.status, healed.action) == ("RESOLVED", "auto_confirmed")
    assert result.healed == 1
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.attempt_id == lost.id))
        assert receipt is not None
        assert (receipt.amount, receipt.channel_trade_no) == (4200, "2026LOST")
    # ...and the stranger's money is parked in suspense for a person.
    parked = found[("CHANNEL_ONLY", stranger)]
    assert (parked.status, parked.action, parked.attempt_id) == ("OPEN", "parked_in_suspense", None)
    status = found[("STATUS_MISMATCH", str(pending_refund.id))]
    assert (status.our_amount, status.channel_amount) == (1000, 1000)
    assert len(found) == 8
    async with res.sessions() as s:
        balances = await ledger.balances(s)
    # The channel keeps its fee on every payment it lists, identified or not.
    fees = sum(ln.fee for ln in lines if ln.kind is StatementKind.PAYMENT)
    assert balances["suspense"] == -777
    assert balances["channel_fees:alipay"] == fees
    assert result.counts["matched"] == 7
    await _verify(res)


async def test_rerun_is_idempotent_and_resent_file_not_double_counted(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        receipts = [(await paid_bill(s, agency, item, 1000 + n))[2] for n in range(5)]
        await s.commit()
    lines = [line_for(r, fee=3) for r in receipts[:4]]
    first = await reconcile(
        res.sessions, channel="alipay", day=DAY, lines=lines, today=DAY + timedelta(days=1)
    )
    async with res.sessions() as s:
        entries = await s.scalar(select(func.count()).select_from(JournalEntry))
    again = await reconcile(
        res.sessions, channel="alipay", day=DAY, lines=list(lines), today=DAY + timedelta(days=1)
    )
    plain = await reconcile(res.sessions, channel="alipay", day=DAY, today=DAY + timedelta(days=1))
    assert again.duplicate_file
    assert not first.duplicate_file
    assert first.counts == again.counts == plain.counts
    assert first.counts["matched"] == 4
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(StatementFile)) == 1
        assert await s.scalar(select(func.count()).select_from(StatementRow)) == 4
        assert await s.scalar(select(func.count()).select_from(JournalEntry)) == entries
        assert await s.scalar(select(func.count()).select_from(Discrepancy)) == 1
        fee_total = (await ledger.balances(s))["channel_fees:alipay"]
    assert fee_total == 12
    await _verify(res)


async def test_late_file_clears_held_platform_only_and_fees_follow_the_file(
    res: Resources,
) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        a = (await paid_bill(s, agency, item, 1000))[2]
        b = (await paid_bill(s, agency, item, 2000))[2]
        await s.commit()
    await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=[line_for(a, fee=5)],
        today=DAY + timedelta(days=1),
    )
    held = (await _discrepancies(res))[("PLATFORM_ONLY", str(b.attempt_id))]
    assert (held.status, held.hold_until) == ("HELD", DAY + timedelta(days=3))
    # Past the window, still missing: it becomes an error for a person.
    await reconcile(res.sessions, channel="alipay", day=DAY, today=DAY + timedelta(days=4))
    assert (await _discrepancies(res))[("PLATFORM_ONLY", str(b.attempt_id))].status == "OPEN"
    # The corrected file arrives: the new file supersedes the old, the difference clears.
    await reconcile(
        res.sessions,
        channel="alipay",
        day=DAY,
        lines=[line_for(a, fee=5), line_for(b, fee=7)],
        today=DAY + timedelta(days=5),
    )
    cleared = (await _discrepancies(res))[("PLATFORM_ONLY", str(b.attempt_id))]
    assert (cleared.status, cleared.action) == ("RESOLVED", "cleared_by_rerun")
    async with res.sessions() as s:
        assert (await ledger.balances(s))["channel_fees:alipay"] == 12
        files = (await s.scalars(select(StatementFile.status).order_by(StatementFile.id))).all()
        audited = await s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "discrepancy.cleared_by_rerun")
        )
    assert list(files) == ["SUPERSEDED", "CURRENT"]
    assert audited == 1
    await _verify(res)


async def test_a_bad_file_fails_its_run_only(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        r = (await paid_bill(s, agency, item, 1000, channel="bank"))[2]
        await s.commit()
    bad_time = datetime(2026, 11, 20, 10, 0)  # noqa: DTZ001 - the malformed input under test
    naive = StatementLine("T1", str(uuid.uuid4()), StatementKind.PAYMENT, 100, 0, bad_time)
    with pytest.raises(InvalidInput, match="time without zone"):
        await reconcile(res.sessions, channel="alipay", day=DAY, lines=[naive])
    with pytest.raises(NotFound):
        await reconcile(res.sessions, channel="kiosk", day=DAY)
    ok = await reconcile(res.sessions, channel="bank", day=DAY, lines=[line_for(r)])
    assert ok.counts["matched"] == 1
    async with res.sessions() as s:
        runs = {(run.channel, run.status) for run in await s.scalars(select(ReconRun))}
        assert await s.scalar(select(func.count()).select_from(StatementRow)) == 1
    assert runs == {("alipay", "FAILED"), ("kiosk", "FAILED"), ("bank", "DONE")}


async def test_people_resolve_or_accept_once_and_it_is_audited(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        r = (await paid_bill(s, agency, item, 1000))[2]
        await s.commit()
    await reconcile(res.sessions, channel="alipay", day=DAY, lines=[line_for(r, amount=999)])
    d = (await _discrepancies(res))[("AMOUNT_MISMATCH", str(r.attempt_id))]
    async with res.sessions() as s:
        await act_on(s, d.id, decision="ACCEPTED", action="", who="finance-li", note="rounding")
        await s.commit()
    async with res.sessions() as s:
        with pytest.raises(Conflict):
            await act_on(s, d.id, decision="RESOLVED", action="other", who="finance-li")
        entry = await s.scalar(select(AuditEntry).where(AuditEntry.object_id == str(d.id)))
    assert entry is not None
    assert (entry.action, entry.actor_id) == ("discrepancy.accepted", "finance-li")
    # A re-run never reopens what a person decided.
    await reconcile(res.sessions, channel="alipay", day=DAY)
    assert (await _discrepancies(res))[("AMOUNT_MISMATCH", str(r.attempt_id))].status == (
        "ACCEPTED"
    )


async def test_worker_opens_platform_only_after_the_hold_window(res: Resources) -> None:
    from gateway.worker import default_jobs, run_once

    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        old = DAY - timedelta(days=30)
        a = (await paid_bill(s, agency, item, 1000, paid_at=at(old)))[2]
        b = (await paid_bill(s, agency, item, 2000, paid_at=at(old)))[2]
        await s.commit()
    # Reconciled on the day itself; by the real today the hold window has passed.
    await reconcile(res.sessions, channel="alipay", day=old, lines=[line_for(a)], today=old)
    key = ("PLATFORM_ONLY", str(b.attempt_id))
    assert (await _discrepancies(res))[key].status == "HELD"
    handled = await run_once(res, [j for j in default_jobs() if j.name == "recon_hold_expiry"])
    assert handled == {"recon_hold_expiry": 1}
    assert (await _discrepancies(res))[key].status == "OPEN"
    async with res.sessions() as s:
        audited = await s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "discrepancy.hold_expired")
        )
    assert audited == 1
