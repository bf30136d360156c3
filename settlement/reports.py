"""Read-side views for finance: a day's summary, discrepancy lists, ad-hoc totals."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.errors import InvalidInput
from payments.models import DayCheck
from settlement.models import DepositBatch, Discrepancy, ReconRun
from settlement.treasury import day_batches

__all__ = [
    "day_summary",
    "discrepancies",
    "discrepancy_view",
    "totals",
]

MAX_RANGE_DAYS = 366


async def day_summary(session: AsyncSession, day: date) -> dict[str, Any]:
    channels: dict[str, dict[str, Any]] = {}
    rows = await session.execute(
        text(
            "SELECT channel, pay_mode, kind, status, count(*), sum(amount)::bigint,"
            " sum(refunded_amount)::bigint FROM receipts WHERE business_date = :d"
            " GROUP BY channel, pay_mode, kind, status ORDER BY 1, 2, 3, 4"
        ),
        {"d": day},
    )
    for ch, mode, kind, status, n, total, refunded in rows:
        c = channels.setdefault(ch, {"receipts": [], "reconciliation": None})
        c["receipts"].append(
            {
                "pay_mode": mode,
                "kind": kind,
                "status": status,
                "count": n,
                "amount": total,
                "refunded": refunded,
            }
        )
    runs = await session.scalars(
        select(ReconRun)
        .where(ReconRun.business_date == day)
        .order_by(ReconRun.channel, ReconRun.id.desc())
        .ext(distinct_on(ReconRun.channel))
    )
    for run in runs:
        c = channels.setdefault(run.channel, {"receipts": [], "reconciliation": None})
        c["reconciliation"] = {
            "run_id": run.id,
            "status": run.status,
            "counts": run.counts,
            "error": run.error,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        }
    disc = await session.execute(
        text(
            "SELECT channel, klass, status, count(*) FROM discrepancies WHERE business_date = :d"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        {"d": day},
    )
    batches = await day_batches(session, day)
    checks = await session.scalars(
        select(DayCheck).where(DayCheck.business_date == day).order_by(DayCheck.channel)
    )
    return {
        "date": day.isoformat(),
        "channels": channels,
        "discrepancies": [
            {"channel": ch, "class": k, "status": st, "count": n} for ch, k, st, n in disc
        ],
        "batches": [batch_view(b) for b in batches],
        # The channels' own day-end checks (payments.daycheck) and what differed.
        "day_checks": [
            {
                "channel": c.channel,
                "lines": c.line_count,
                "total": c.total,
                "mismatches": c.mismatches,
                "received_at": c.received_at.isoformat(),
            }
            for c in checks
        ],
    }


def batch_view(b: DepositBatch) -> dict[str, Any]:
    return {
        "id": str(b.id),
        "treasury_code": b.treasury_code,
        "finance_org_code": b.finance_org_code,
        "budget_level": b.budget_level,
        "fund_type": b.fund_type,
        "line_count": b.line_count,
        "total": b.total,
        "status": b.status,
        "content_hash": b.content_hash,
    }


def discrepancy_view(d: Discrepancy) -> dict[str, Any]:
    return {
        "id": d.id,
        "channel": d.channel,
        "date": d.business_date.isoformat(),
        "class": d.klass,
        "status": d.status,
        "key": d.match_key,
        "attempt_id": str(d.attempt_id) if d.attempt_id else None,
        "receipt_id": str(d.receipt_id) if d.receipt_id else None,
        "channel_trade_no": d.channel_trade_no,
        "our_amount": d.our_amount,
        "channel_amount": d.channel_amount,
        "channel_fee": d.channel_fee,
        "expected_fee": d.expected_fee,
        "hold_until": d.hold_until.isoformat() if d.hold_until else None,
        "action": d.action,
        "resolved_by": d.resolved_by,
        "note": d.note,
    }


async def discrepancies(
    session: AsyncSession,
    *,
    day: date | None = None,
    channel: str | None = None,
    status: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    stmt = select(Discrepancy).order_by(Discrepancy.id).limit(max(1, min(limit, 1000)))
    if day is not None:
        stmt = stmt.where(Discrepancy.business_date == day)
    if channel is not None:
        stmt = stmt.where(Discrepancy.channel == channel)
    if status is not None:
        stmt = stmt.where(Discrepancy.status == status.upper())
    return [discrepancy_view(d) for d in await session.scalars(stmt)]


_GROUPS = {
    # receipts-level totals
    "agency": ("b.agency_id::text", "r.amount"),
    "channel": ("r.channel", "r.amount"),
    "pay_mode": ("r.pay_mode", "r.amount"),
    # channel and pay mode together: `bank:102/COUNTER`
    "channel_pay_mode": ("r.channel || '/' || r.pay_mode", "r.amount"),
    "date": ("r.business_date::text", "r.amount"),
    # line-level: the principal of each item (late fees stay with the receipt totals)
    "item": ("bl.item_code", "bl.amount"),
}


async def totals(
    session: AsyncSession, *, group_by: str, start: date, end: date
) -> list[dict[str, Any]]:
    """Paid totals (PAYMENT receipts, before refunds) by agency, item, channel, pay mode
    (channels.base.PayMode), channel and pay mode, or date."""
    if group_by not in _GROUPS:
        raise InvalidInput(f"group_by must be one of {sorted(_GROUPS)}", code="unknown_group")
    if end < start or (end - start).days > MAX_RANGE_DAYS:
        raise InvalidInput("date range is empty or longer than a year", code="bad_range")
    key, amount = _GROUPS[group_by]
    join = "JOIN bill_lines bl ON bl.bill_id = b.id" if group_by == "item" else ""
    rows = await session.execute(
        text(
            f"SELECT {key} AS k, count(*), sum({amount})::bigint,"  # noqa: S608 - fixed fragments
            " sum(r.refunded_amount)::bigint"
            f" FROM receipts r JOIN bills b ON b.id = r.bill_id {join}"
            " WHERE r.kind = 'PAYMENT' AND r.business_date BETWEEN :s AND :e"
            " GROUP BY 1 ORDER BY 1"
        ),
        {"s": start, "e": end},
    )
    return [
        {"key": k, "count": n, "amount": total}
        | ({} if group_by == "item" else {"refunded": refunded})
        for k, n, total, refunded in rows
    ]
