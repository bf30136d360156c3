"""Treasury settlement: sweep a reconciled business day into deposit batches (缴库).

`settle(day)` runs in one transaction:

1. Every channel with receipts that day must have its latest reconciliation DONE.
2. Settled-ready receipts (CONFIRMED payments of the day, no open difference on them, no
   channel refund in flight) move to SETTLED and are recorded in `settled_receipts`
   (primary key: once only) in one statement.
3. Each receipt's net amount (amount − refunded) is spread over its bill lines: the line
   amounts, with the late fee on line 1; a receipt partly refunded before settlement is
   allocated pro rata by largest remainder. That is aggregated by region × item in SQL.
4. Each region × item total is split across budget levels by the item's ratios with the
   largest-remainder rule (`settlement.split.split_fen`): no fen lost or invented.
5. One batch per treasury (region × level, from `treasuries`) with detail lines per budget
   subject; treasury refunds (退库) requested since the last batch become negative REFUND
   lines. Σ details = header total, checked before insert.
6. Bills → SETTLED (with a bill event each; receipts moved when claimed), sweep posted.

A treasury refund's REFUND lines bring its money back from the treasury to the collection
account; it is not paid to anyone yet. Once every batch carrying it is exported it is due
for payout (settlement.payouts: the instruction file, then the finance officer confirms the
bank transfer) and only then SUCCEEDED.

Export layouts (both deterministic; the content hash is SHA-256 over CSV bytes + LF + XML
bytes, fixed at first export, after which the batch is immutable — a DB trigger refuses
updates):

CSV (UTF-8, comma separated, LF line ends, amounts in yuan with two decimals)::

    H,<batch id>,<business date YYYY-MM-DD>,<treasury code>,<finance org code>,
      <budget level>,<fund type>,<line count>,<total>
    D,<line no>,<DEPOSIT|REFUND>,<budget subject>,<budget level>,<amount>,<item count>,
      <payment ref>

XML::

    <DepositBatch id= date= >
      <Header TreasuryCode= FinanceOrgCode= BudgetLevel= FundType= Count= Total= />
      <Detail LineNo= Kind= Subject= Level= Amount= ItemCount= PaymentRef= />...
    </DepositBatch>

`PaymentRef` is `<settlement id>:<subject>`; the payment codes behind a line are listed by
`payment_codes(batch_id, line_no)` (and the finance API).
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from xml.etree import ElementTree as ET

import structlog
from sqlalchemy import CursorResult, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

import ledger
from billing import events as bill_events
from billing.events import Sql
from billing.models import Agency, Bill, BillLine, RevenueItem
from billing.states import BILL, BillStatus
from channels.money import fen_to_yuan
from kernel import audit
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.states import sql_in
from payments.models import Refund
from payments.states import REFUND, RefundStatus
from settlement.models import BatchedRefund, DepositBatch, DepositLine, Settlement, Treasury
from settlement.split import split_fen
from settlement.states import DEPOSIT_BATCH, DISCREPANCY, DepositBatchStatus

__all__ = [
    "STAGES",
    "ExportedBatch",
    "SettleResult",
    "day_batches",
    "export_batch",
    "payment_codes",
    "settle",
]

log = structlog.get_logger(__name__)

LEVELS = (1, 2, 3, 4, 5, 6)

_UNRECONCILED = """
SELECT DISTINCT r.channel FROM receipts r
WHERE r.business_date = :day AND r.status = 'CONFIRMED'
  AND coalesce((SELECT run.status FROM recon_runs run
                WHERE run.channel = r.channel AND run.business_date = :day
                  AND run.status <> 'RUNNING'
                ORDER BY run.id DESC LIMIT 1), 'NONE') <> 'DONE'
"""

# Claiming is the status change itself: the UPDATE locks each receipt, so a refund
# requested at the same moment either commits first (its reservation is then excluded from
# the net) or waits and finds the receipt SETTLED (a treasury refund).
_CLAIM = f"""
WITH claimed AS (
    UPDATE receipts r SET status = 'SETTLED'
    WHERE r.business_date = :day AND r.status = 'CONFIRMED' AND r.kind = 'PAYMENT'
      AND NOT EXISTS (SELECT 1 FROM discrepancies d WHERE d.receipt_id = r.id
                      AND d.status IN {sql_in(DISCREPANCY.live)})
      AND NOT EXISTS (SELECT 1 FROM refunds f WHERE f.receipt_id = r.id AND f.route = 'CHANNEL'
                      AND f.status IN ('REQUESTED', 'PROCESSING', 'UNKNOWN'))
    RETURNING r.id, r.amount - r.refunded_amount AS net)
INSERT INTO settled_receipts (receipt_id, settlement_id, amount)
SELECT id, :sid, net FROM claimed
"""  # noqa: S608 - machine states only

# Region × item totals of the claimed receipts; see the module docstring, step 3.
_ALLOCATE = """
WITH sr AS (
    SELECT s.receipt_id, s.amount AS net, b.id AS bill_id, b.principal_amount AS principal,
           a.region_code
    FROM settled_receipts s
    JOIN receipts r ON r.id = s.receipt_id
    JOIN bills b ON b.id = r.bill_id
    JOIN agencies a ON a.id = b.agency_id
    WHERE s.settlement_id = :sid AND s.amount > 0),
simple AS (
    SELECT sr.region_code, bl.item_code,
           bl.amount + CASE WHEN bl.line_no = 1 THEN sr.net - sr.principal ELSE 0 END AS share
    FROM sr JOIN bill_lines bl ON bl.bill_id = sr.bill_id
    WHERE sr.net >= sr.principal),
pro AS (
    SELECT sr.receipt_id, sr.region_code, sr.net, bl.item_code, bl.line_no,
           (sr.net * bl.amount) / sr.principal AS base,
           (sr.net * bl.amount) % sr.principal AS rem
    FROM sr JOIN bill_lines bl ON bl.bill_id = sr.bill_id
    WHERE sr.net < sr.principal),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY receipt_id ORDER BY rem DESC, line_no) AS rk,
           net - sum(base) OVER (PARTITION BY receipt_id) AS short
    FROM pro)
SELECT region_code, item_code, sum(share)::bigint AS total, count(*) AS n FROM (
    SELECT region_code, item_code, share FROM simple
    UNION ALL
    SELECT region_code, item_code, base + CASE WHEN rk <= short THEN 1 ELSE 0 END FROM ranked
) x GROUP BY region_code, item_code
"""

_PER_CHANNEL = """
SELECT r.channel, sum(s.amount)::bigint, count(*) FROM settled_receipts s
JOIN receipts r ON r.id = s.receipt_id WHERE s.settlement_id = :sid GROUP BY r.channel
"""

# The states that may become SETTLED come from the bill's machine, not from this text.
_SETTLEABLE = sql_in(BILL.sources(BillStatus.SETTLED))
_SETTLED_EVENTS = bill_events.insert_sql(
    "moved",
    bill_id=Sql("id"),
    src=Sql("old"),  # from the UPDATE guarded by _SETTLEABLE
    dst=BillStatus.SETTLED,
    actor_type="system",
    actor_id=Sql(":actor"),
    reason="treasury settlement",
    detail=Sql("jsonb_build_object('settlement_id', CAST(:sid AS text))"),
)
_BILLS_SETTLED = f"""
WITH moved AS (
    UPDATE bills b SET status = '{BillStatus.SETTLED}', updated_at = now()
    FROM (SELECT b2.id, b2.status AS old FROM bills b2
          JOIN receipts r ON r.bill_id = b2.id
          JOIN settled_receipts s ON s.receipt_id = r.id
          WHERE s.settlement_id = :sid AND b2.status IN {_SETTLEABLE}) x
    -- re-checked on the locked row: a bill refunded meanwhile is left alone
    WHERE b.id = x.id AND b.status IN {_SETTLEABLE}
    RETURNING b.id, x.old)
{_SETTLED_EVENTS}
"""  # noqa: S608 - machine states and constants only


@dataclass
class SettleResult:
    settlement_id: uuid.UUID | None
    business_date: date
    receipts: int = 0
    total: int = 0
    batches: list[uuid.UUID] = field(default_factory=list)
    refunds: int = 0


@dataclass(frozen=True, slots=True)
class ExportedBatch:
    batch_id: uuid.UUID
    csv: bytes
    xml: bytes
    content_hash: str


@dataclass
class _Acc:
    deposits: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    refunds: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    refund_ids: list[uuid.UUID] = field(default_factory=list)


STAGES = ("check", "claim", "allocate", "batches", "mark", "ledger")


def _quiet(stage: str) -> None:
    del stage


async def settle(
    session: AsyncSession,
    *,
    day: date,
    actor: str,
    progress: Callable[[str], None] = _quiet,
) -> SettleResult:
    """Settle whatever of `day` is ready; re-running settles only what became ready since.

    Runs in the caller's transaction; the caller commits. `progress` is told when each of
    STAGES is done (the CLI draws a bar with it).
    """
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"settle:{day.isoformat()}"}
    )
    missing = list(await session.scalars(text(_UNRECONCILED), {"day": day}))
    if missing:
        raise Conflict(
            f"{day.isoformat()} is not reconciled for {', '.join(sorted(missing))}",
            code="day_not_reconciled",
            channels=sorted(missing),
        )
    progress("check")
    sid = uuid.uuid4()
    result = SettleResult(settlement_id=sid, business_date=day)
    session.add(Settlement(id=sid, business_date=day, receipt_count=0, total=0, created_by=actor))
    await session.flush()
    claimed: CursorResult[Any] = await session.execute(  # type: ignore[assignment]  # DML
        text(_CLAIM), {"sid": sid, "day": day}
    )
    progress("claim")
    acc: dict[tuple[str, int], _Acc] = defaultdict(_Acc)
    rows = (await session.execute(text(_ALLOCATE), {"sid": sid})).all()
    items = await _items(session, {item for _, item, _, _ in rows})
    for region, item_code, total, n in rows:
        subject, bps = items[item_code]
        for level, share in zip(LEVELS, split_fen(int(total), bps), strict=True):
            if share:
                cell = acc[(region, level)].deposits[subject]
                cell[0] += share
                cell[1] += int(n)
    result.refunds = await _treasury_refunds(session, acc)
    progress("allocate")
    if not claimed.rowcount and not result.refunds:
        await session.execute(delete(Settlement).where(Settlement.id == sid))
        return SettleResult(settlement_id=None, business_date=day)
    treasuries = await _treasuries(session, set(acc))
    per_treasury: dict[str, int] = {}
    refunds_per_treasury: dict[str, int] = {}
    for (region, level), a in sorted(acc.items()):
        t = treasuries[(region, level)]
        batch_id = await _make_batch(session, sid, day, t, a)
        result.batches.append(batch_id)
        per_treasury[t.treasury_code] = sum(v[0] for v in a.deposits.values())
        refunds_per_treasury[t.treasury_code] = sum(v[0] for v in a.refunds.values())
    progress("batches")
    per_channel = {
        ch: int(total) for ch, total, _ in await session.execute(text(_PER_CHANNEL), {"sid": sid})
    }
    result.receipts = int(claimed.rowcount)
    result.total = sum(per_channel.values())
    if result.total != sum(per_treasury.values()):
        raise AssertionError("allocation lost or invented money")  # split_fen guarantees it
    await session.execute(text(_BILLS_SETTLED), {"sid": sid, "actor": actor})
    await session.execute(
        update(Settlement)
        .where(Settlement.id == sid)
        .values(receipt_count=result.receipts, total=result.total)
    )
    progress("mark")
    await ledger.post_sweep(
        session,
        settlement_id=sid,
        business_date=day,
        per_channel={k: v for k, v in per_channel.items() if v},
        per_treasury={k: v for k, v in per_treasury.items() if v},
        refunds_per_treasury={k: v for k, v in refunds_per_treasury.items() if v},
    )
    audit.record(
        session,
        actor_type="finance",
        actor_id=actor,
        action="settlement.create",
        object_type="settlement",
        object_id=str(sid),
        detail={"date": day.isoformat(), "receipts": result.receipts, "total": result.total},
    )
    progress("ledger")
    log.info("day settled", day=day.isoformat(), receipts=result.receipts, total=result.total)
    return result


async def _items(session: AsyncSession, codes: set[str]) -> dict[str, tuple[str, list[int]]]:
    found = await session.scalars(select(RevenueItem).where(RevenueItem.code.in_(codes)))
    return {
        i.code: (
            i.budget_subject,
            [
                i.split_l1_bp,
                i.split_l2_bp,
                i.split_l3_bp,
                i.split_l4_bp,
                i.split_l5_bp,
                i.split_l6_bp,
            ],
        )
        for i in found
    }


async def _treasuries(
    session: AsyncSession, keys: set[tuple[str, int]]
) -> dict[tuple[str, int], Treasury]:
    found = {(t.region_code, t.budget_level): t for t in await session.scalars(select(Treasury))}
    missing = sorted(keys - set(found))
    if missing:
        raise InvalidInput(
            "no treasury configured for " + ", ".join(f"{r}/level {lv}" for r, lv in missing),
            code="treasury_not_configured",
        )
    return found


async def _treasury_refunds(session: AsyncSession, acc: dict[tuple[str, int], _Acc]) -> int:
    """Requested treasury refunds (退库), allocated like the receipt they refund."""
    refunds = list(
        await session.scalars(
            select(Refund)
            .where(
                Refund.route == "TREASURY",
                Refund.status == RefundStatus.REQUESTED,
                ~select(BatchedRefund.refund_id)
                .where(BatchedRefund.refund_id == Refund.id)
                .exists(),
            )
            .order_by(Refund.created_at, Refund.id)
            .with_for_update(skip_locked=True)
        )
    )
    if not refunds:
        return 0
    # Three queries for all of them (regions, bill lines, items), not three per refund.
    bill_ids = list({r.bill_id for r in refunds})
    found = await session.execute(
        select(Bill.id, Agency.region_code)
        .join(Agency, Agency.id == Bill.agency_id)
        .where(Bill.id.in_(bill_ids))
    )
    regions: dict[uuid.UUID, str] = {row[0]: row[1] for row in found}
    lines_of: dict[uuid.UUID, list[tuple[str, int]]] = defaultdict(list)
    for bill_id, item_code, amount in await session.execute(
        select(BillLine.bill_id, BillLine.item_code, BillLine.amount)
        .where(BillLine.bill_id.in_(bill_ids))
        .order_by(BillLine.bill_id, BillLine.line_no)
    ):
        lines_of[bill_id].append((item_code, int(amount)))
    items = await _items(session, {code for lines in lines_of.values() for code, _ in lines})
    for refund in refunds:
        region, lines = regions[refund.bill_id], lines_of[refund.bill_id]
        per_line = split_fen(refund.amount, [amount for _, amount in lines])
        levels: set[int] = set()
        for (item_code, _), line_amount in zip(lines, per_line, strict=True):
            subject, bps = items[item_code]
            for level, share in zip(LEVELS, split_fen(line_amount, bps), strict=True):
                if share:
                    cell = acc[(region, level)].refunds[subject]
                    cell[0] += share
                    cell[1] += 1
                    levels.add(level)
        REFUND.check(refund.status, RefundStatus.PROCESSING)
        refund.status = RefundStatus.PROCESSING
        # Linked to every level's batch that pays part of it: the refund is done only once
        # all of them are exported (see export_batch).
        for level in sorted(levels):
            acc[(region, level)].refund_ids.append(refund.id)
    return len(refunds)


async def _make_batch(
    session: AsyncSession, sid: uuid.UUID, day: date, t: Treasury, a: _Acc
) -> uuid.UUID:
    lines: list[DepositLine] = []
    for kind, cells, sign in (("DEPOSIT", a.deposits, 1), ("REFUND", a.refunds, -1)):
        for subject in sorted(cells):
            amount, n = cells[subject]
            lines.append(
                DepositLine(
                    line_no=len(lines) + 1,
                    kind=kind,
                    budget_subject=subject,
                    budget_level=t.budget_level,
                    amount=sign * amount,
                    item_count=n,
                    payment_ref=f"{sid}:{subject}",
                )
            )
    batch = DepositBatch(
        id=uuid.uuid4(),
        settlement_id=sid,
        business_date=day,
        treasury_code=t.treasury_code,
        finance_org_code=t.finance_org_code,
        region_code=t.region_code,
        budget_level=t.budget_level,
        line_count=len(lines),
        total=sum(line.amount for line in lines),
    )
    session.add(batch)
    await session.flush()
    for line in lines:
        line.batch_id = batch.id
        session.add(line)
    for refund_id in a.refund_ids:
        session.add(BatchedRefund(refund_id=refund_id, batch_id=batch.id))
    await session.flush()
    return batch.id


# ------------------------------------------------------------------ export


def render(batch: DepositBatch, lines: list[DepositLine]) -> tuple[bytes, bytes]:
    """The batch as CSV and XML bytes (layouts in the module docstring); deterministic."""
    if sum(line.amount for line in lines) != batch.total or len(lines) != batch.line_count:
        raise AssertionError(f"batch {batch.id}: details do not add up to the header")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        [
            "H",
            batch.id,
            batch.business_date.isoformat(),
            batch.treasury_code,
            batch.finance_org_code,
            batch.budget_level,
            batch.fund_type,
            batch.line_count,
            fen_to_yuan(batch.total),
        ]
    )
    for line in lines:
        w.writerow(
            [
                "D",
                line.line_no,
                line.kind,
                line.budget_subject,
                line.budget_level,
                fen_to_yuan(line.amount),
                line.item_count,
                line.payment_ref,
            ]
        )
    root = ET.Element("DepositBatch", id=str(batch.id), date=batch.business_date.isoformat())
    ET.SubElement(
        root,
        "Header",
        TreasuryCode=batch.treasury_code,
        FinanceOrgCode=batch.finance_org_code,
        BudgetLevel=str(batch.budget_level),
        FundType=batch.fund_type,
        Count=str(batch.line_count),
        Total=fen_to_yuan(batch.total),
    )
    for line in lines:
        ET.SubElement(
            root,
            "Detail",
            LineNo=str(line.line_no),
            Kind=line.kind,
            Subject=line.budget_subject,
            Level=str(line.budget_level),
            Amount=fen_to_yuan(line.amount),
            ItemCount=str(line.item_count),
            PaymentRef=line.payment_ref,
        )
    xml = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return out.getvalue().encode(), xml


def content_hash(csv_bytes: bytes, xml_bytes: bytes) -> str:
    return hashlib.sha256(csv_bytes + b"\n" + xml_bytes).hexdigest()


async def export_batch(session: AsyncSession, batch_id: uuid.UUID, *, actor: str) -> ExportedBatch:
    """Export a batch; the first export freezes it (hash, deposit posting; its treasury
    refunds become due for payout once all their batches are exported).

    Later exports re-render and must reproduce the recorded hash byte for byte.
    """
    batch = await session.scalar(
        select(DepositBatch).where(DepositBatch.id == batch_id).with_for_update()
    )
    if batch is None:
        raise NotFound(f"no deposit batch {batch_id}", code="batch_not_found")
    lines = list(
        await session.scalars(
            select(DepositLine)
            .where(DepositLine.batch_id == batch_id)
            .order_by(DepositLine.line_no)
        )
    )
    csv_bytes, xml_bytes = render(batch, lines)
    digest = content_hash(csv_bytes, xml_bytes)
    if batch.status == DepositBatchStatus.EXPORTED:
        if digest != batch.content_hash:
            raise AssertionError(f"batch {batch_id} no longer matches its exported hash")
        return ExportedBatch(batch.id, csv_bytes, xml_bytes, digest)
    if batch.total:
        await ledger.post_deposit(
            session,
            batch_id=batch.id,
            treasury_code=batch.treasury_code,
            amount=batch.total,
            business_date=batch.business_date,
        )
    # All in one UPDATE: once EXPORTED, the row refuses any change (deposit_batches_frozen).
    DEPOSIT_BATCH.check(batch.status, DepositBatchStatus.EXPORTED)
    batch.status = DepositBatchStatus.EXPORTED
    batch.content_hash = digest
    batch.exported_at = datetime.now(UTC)
    batch.exported_by = actor
    for refund_id in await _refunds_now_due(session, batch.id):
        # Back in the collection account, owed to the payer: the payout is confirmed later.
        audit.record(
            session,
            actor_type="finance",
            actor_id=actor,
            action="refund.payout_due",
            object_type="refund",
            object_id=str(refund_id),
            detail={"batch_id": str(batch.id)},
        )
    audit.record(
        session,
        actor_type="finance",
        actor_id=actor,
        action="deposit_batch.export",
        object_type="deposit_batch",
        object_id=str(batch.id),
        detail={"hash": digest, "total": batch.total},
    )
    await session.flush()
    return ExportedBatch(batch.id, csv_bytes, xml_bytes, digest)


async def _refunds_now_due(session: AsyncSession, batch_id: uuid.UUID) -> list[uuid.UUID]:
    """The refunds of this batch whose every batch is now exported (this one included).

    The refund rows are locked (in id order, so two exports cannot deadlock) before the
    other batches are looked at: of two exports finishing one refund's last two batches,
    the second waits here and then sees the first one's EXPORTED, so exactly one of them
    reports the refund due.
    """
    await session.flush()  # this batch's EXPORTED, for the query below
    ids = list(
        await session.scalars(
            select(Refund.id)
            .join(BatchedRefund, BatchedRefund.refund_id == Refund.id)
            .where(BatchedRefund.batch_id == batch_id)
            .order_by(Refund.id)
            .with_for_update(of=Refund)
        )
    )
    if not ids:
        return []
    unfinished = set(
        await session.scalars(
            select(BatchedRefund.refund_id)
            .join(DepositBatch, DepositBatch.id == BatchedRefund.batch_id)
            .where(
                BatchedRefund.refund_id.in_(ids), DepositBatch.status != DepositBatchStatus.EXPORTED
            )
        )
    )
    return [i for i in ids if i not in unfinished]


async def payment_codes(session: AsyncSession, batch_id: uuid.UUID, line_no: int) -> list[str]:
    """The payment codes behind one detail line (its PaymentRef), sorted."""
    line = await session.scalar(
        select(DepositLine).where(DepositLine.batch_id == batch_id, DepositLine.line_no == line_no)
    )
    if line is None:
        raise NotFound("no such detail line", code="line_not_found")
    sid, subject = line.payment_ref.split(":", 1)
    rows = await session.scalars(
        text(
            "SELECT DISTINCT b.payment_code FROM settled_receipts s"
            " JOIN receipts r ON r.id = s.receipt_id JOIN bills b ON b.id = r.bill_id"
            " JOIN bill_lines bl ON bl.bill_id = b.id"
            " JOIN revenue_items i ON i.code = bl.item_code"
            " WHERE s.settlement_id = CAST(:sid AS uuid) AND i.budget_subject = :subject"
            " ORDER BY 1"
        ),
        {"sid": sid, "subject": subject},
    )
    return list(rows)


async def day_batches(session: AsyncSession, day: date) -> list[DepositBatch]:
    return list(
        await session.scalars(
            select(DepositBatch)
            .where(DepositBatch.business_date == day)
            .order_by(DepositBatch.treasury_code, DepositBatch.id)
        )
    )
