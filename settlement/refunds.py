"""Executing refunds (退付) through the channel that took the money.

Claim → call → record, like every channel operation. The `refund.execute` outbox message
is leased (pushed back) while its refund is in flight, so a crash or an Unavailable channel
simply lets it be claimed again; the refund id is the channel's idempotency key, so sending
it twice refunds once. OutcomeUnknown parks the refund as UNKNOWN for `recover_refunds`,
which queries the channel (and re-sends when the channel never saw it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing import audit, outbox
from billing.models import Bill, BillEvent
from billing.outbox import OutboxMessage
from billing.states import BILL, REFUND, BillStatus, RefundStatus
from channels.base import (
    OutcomeUnknown,
    RefundRequest,
    RefundResult,
    RefundState,
    Rejected,
    Unavailable,
)
from settlement import bills
from settlement.context import PaymentContext
from settlement.models import Receipt, Refund

log = structlog.get_logger(__name__)

LEASE = timedelta(minutes=2)
STALE_PROCESSING = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _InFlight:
    refund_id: uuid.UUID
    request: RefundRequest
    channel: str
    message_id: int | None


async def _move(
    s: AsyncSession, refund_id: uuid.UUID, src: str, dst: str, **values: object
) -> bool:
    REFUND.check(src, dst)
    result = await s.execute(
        update(Refund)
        .where(Refund.id == refund_id, Refund.status == src)
        .values(status=dst, **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def _request_for(s: AsyncSession, refund: Refund) -> tuple[RefundRequest, str]:
    row = (
        await s.execute(
            select(Receipt.attempt_id, Receipt.channel, Receipt.channel_trade_no).where(
                Receipt.id == refund.receipt_id
            )
        )
    ).one()
    attempt_id, channel, trade_no = row
    return (
        RefundRequest(
            refund_id=str(refund.id),
            attempt_id=str(attempt_id),
            amount=refund.amount,
            reason=refund.reason,
            channel_trade_no=trade_no,
        ),
        channel,
    )


async def execute_refunds(
    ctx: PaymentContext, *, now: datetime | None = None, limit: int = 20
) -> int:
    """The `refund.execute` topic: send each requested refund to its channel."""
    now = now or datetime.now(UTC)
    flights: list[_InFlight] = []
    async with ctx.sessions() as s, s.begin():
        for msg in await outbox.claim(s, "refund.execute", limit):
            refund_id = uuid.UUID(str(msg.payload["refund_id"]))
            refund = await s.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())
            if refund is None or refund.status not in (
                RefundStatus.REQUESTED,
                RefundStatus.PROCESSING,
            ):
                outbox.done(msg, now)  # finished, failed for a person, or UNKNOWN (recovery's)
                continue
            if refund.status == RefundStatus.REQUESTED:
                await _move(s, refund.id, RefundStatus.REQUESTED, RefundStatus.PROCESSING)
            outbox.retry_later(msg, now, LEASE, "in flight")  # the lease
            req, channel = await _request_for(s, refund)
            flights.append(_InFlight(refund.id, req, channel, msg.id))
    for flight in flights:
        await _send(ctx, flight, now)
    return len(flights)


async def _send(ctx: PaymentContext, flight: _InFlight, now: datetime) -> None:
    bound = log.bind(refund_id=str(flight.refund_id), channel=flight.channel)
    if flight.channel not in ctx.channels:
        bound.error("refund on an unregistered channel")
        return
    adapter = ctx.channels.get(flight.channel)
    try:
        result = await adapter.refund(flight.request)
    except Unavailable as exc:
        bound.info("refund channel unavailable; will retry", code=exc.code)
        return  # nothing was sent; the lease expires and the message is claimed again
    except OutcomeUnknown as exc:
        bound.warning("refund outcome unknown; will query", code=exc.code)
        async with ctx.sessions() as s, s.begin():
            await _move(s, flight.refund_id, RefundStatus.PROCESSING, RefundStatus.UNKNOWN)
            await _finish_message(s, flight.message_id, now)
        return
    except Rejected as exc:
        bound.error("refund rejected by the channel", code=exc.code)
        result = RefundResult(refund_id=str(flight.refund_id), state=RefundState.FAILED)
        await _record(
            ctx,
            refund_id=flight.refund_id,
            src=RefundStatus.PROCESSING,
            result=result,
            now=now,
            failure_code=exc.code,
        )
        async with ctx.sessions() as s, s.begin():
            await _finish_message(s, flight.message_id, now)
        return
    await _record(
        ctx, refund_id=flight.refund_id, src=RefundStatus.PROCESSING, result=result, now=now
    )
    if result.state != RefundState.PROCESSING:
        async with ctx.sessions() as s, s.begin():
            await _finish_message(s, flight.message_id, now)


async def _finish_message(s: AsyncSession, message_id: int | None, now: datetime) -> None:
    if message_id is not None:
        await s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id)
            .values(processed_at=now, last_error=None)
        )


async def _record(
    ctx: PaymentContext,
    *,
    refund_id: uuid.UUID,
    src: str,
    result: RefundResult,
    now: datetime,
    failure_code: str | None = None,
) -> None:
    code: str | None = None
    async with ctx.sessions() as s, s.begin():
        if result.state == RefundState.SUCCEEDED:
            code = await _succeed(s, refund_id, src, result, now)
        elif result.state == RefundState.FAILED:
            await _move(
                s, refund_id, src, RefundStatus.FAILED, failure_code=failure_code or "failed"
            )
        # PROCESSING: the channel is still working on it; recover_refunds will query.
    if code is not None:
        await bills.invalidate(ctx.redis, code)


async def _succeed(
    s: AsyncSession, refund_id: uuid.UUID, src: str, result: RefundResult, now: datetime
) -> str | None:
    """Refund done: receipt and (for the payment) bill move on, e-note and webhook follow."""
    if not await _move(
        s, refund_id, src, RefundStatus.SUCCEEDED, completed_at=result.refunded_at or now
    ):
        return None  # recorded by someone else already
    refund = await s.get_one(Refund, refund_id)
    receipt = await s.get_one(Receipt, refund.receipt_id, with_for_update=True)
    receipt.refunded_amount += refund.amount
    # POSTING POINT (ledger): refund paid out — collection ↔ channel clearing.
    audit.record(
        s,
        actor_type="system",
        actor_id="refunds",
        action="refund.succeeded",
        object_type="refund",
        object_id=str(refund.id),
        detail={"receipt_id": str(receipt.id), "amount": refund.amount, "kind": receipt.kind},
    )
    if receipt.kind != "PAYMENT":
        return None  # a duplicate went back: the bill itself is unchanged
    bill = await s.get_one(Bill, refund.bill_id, with_for_update=True)
    refunded = bill.refunded_amount + refund.amount
    target = BillStatus.REFUNDED if refunded >= bill.paid_amount else BillStatus.PARTIALLY_REFUNDED
    BILL.check(bill.status, target)
    s.add(
        BillEvent(
            bill_id=bill.id,
            from_status=bill.status,
            to_status=target,
            actor_type="system",
            actor_id="refunds",
            reason=refund.reason,
            detail={"refund_id": str(refund.id), "amount": refund.amount},
        )
    )
    bill.refunded_amount = refunded
    bill.status = target
    await outbox.enqueue(s, "enote.red", f"enote.red:{refund.id}", {"refund_id": str(refund.id)})
    await outbox.enqueue(
        s,
        "webhook.event",
        f"bill.refunded:{refund.id}",
        {
            "event": "bill.refunded",
            "agency_id": str(bill.agency_id),
            "bill_id": str(bill.id),
            "data": {
                "refund_id": str(refund.id),
                "amount": refund.amount,
                "refunded_amount": refunded,
                "status": target,
                "reason": refund.reason,
            },
        },
    )
    return bill.payment_code


async def recover_refunds(
    ctx: PaymentContext, *, now: datetime | None = None, limit: int = 20
) -> int:
    """Query refunds whose outcome is unknown or that sat in PROCESSING too long."""
    now = now or datetime.now(UTC)
    async with ctx.sessions() as s, s.begin():
        refunds = (
            await s.scalars(
                select(Refund)
                .where(
                    (Refund.status == RefundStatus.UNKNOWN)
                    | (
                        (Refund.status == RefundStatus.PROCESSING)
                        & (Refund.updated_at < now - STALE_PROCESSING)
                    )
                )
                .order_by(Refund.updated_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        todo: list[tuple[str, _InFlight]] = []
        for refund in refunds:
            refund.updated_at = now  # pushed back: the next look is a STALE_PROCESSING later
            req, channel = await _request_for(s, refund)
            todo.append((refund.status, _InFlight(refund.id, req, channel, None)))
    for status, flight in todo:
        if flight.channel not in ctx.channels:
            continue
        adapter = ctx.channels.get(flight.channel)
        try:
            result = await adapter.query_refund(flight.request.refund_id, flight.request.attempt_id)
        except (Unavailable, OutcomeUnknown, Rejected) as exc:
            log.info("refund query deferred", refund_id=str(flight.refund_id), code=exc.code)
            continue
        if result.state == RefundState.NOT_FOUND:
            # The channel never saw it: send it again under the same idempotency key.
            if status == RefundStatus.UNKNOWN:
                async with ctx.sessions() as s, s.begin():
                    await _move(s, flight.refund_id, RefundStatus.UNKNOWN, RefundStatus.PROCESSING)
            await _send(ctx, flight, now)
            continue
        await _record(ctx, refund_id=flight.refund_id, src=status, result=result, now=now)
    return len(todo)
