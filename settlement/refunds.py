"""Refunds (退付): the request with its "amount available" guard, and the completion.

- A refund reserves its amount on the receipt at request time (`receipts.refunded_amount`),
  so two concurrent requests can never refund more than was paid; a failed refund releases
  its reservation. The receipt row is locked while the guard is checked.
- Route: before settlement (receipt CONFIRMED) the money goes back through the channel that
  took it (executed by the refund worker from the outbox, idempotent per refund id); after
  settlement (receipt SETTLED) it becomes a treasury refund (退库) line in the next deposit
  batch.
- On success: the bill's refunded amount and status move (PAYMENT receipts only; a
  duplicate was never the bill's payment), the ledger posts the refund, and outbox messages
  carry the `bill.refunded` webhook and the e-note red-letter (冲红) request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import audit, outbox
from billing.errors import Conflict, InvalidInput, NotFound
from billing.models import Bill, BillLine, RevenueItem
from billing.states import BILL, REFUND, BillStatus, RefundStatus
from settlement import ledger
from settlement.models import Receipt, Refund

log = structlog.get_logger(__name__)

TOPIC_EXECUTE = "refund.execute"
"""Channel refunds to send; consumed by the payment flow's refund executor."""
TOPIC_WEBHOOK = "webhook"
"""Agency webhooks; payload {agency_id, event, bill_id, data} (billing.webhooks.emit)."""
TOPIC_RED_LETTER = "enote.red_letter"
"""Red-letter (冲红) e-note requests for the e-note issuer."""


@dataclass(frozen=True, slots=True)
class Actor:
    type: str
    """agency | finance | system"""
    id: str


async def request_refund(
    session: AsyncSession,
    *,
    receipt_id: uuid.UUID,
    amount: int,
    reason: str,
    actor: Actor,
    refund_id: uuid.UUID | None = None,
    agency_id: uuid.UUID | None = None,
) -> Refund:
    """Open a refund, full or partial, never beyond what is still available.

    `refund_id` makes the request idempotent: the same id with the same receipt and amount
    answers the existing refund; with anything else it is a conflict. `agency_id` (agency
    callers) restricts the request to the agency's own bills.
    """
    if amount <= 0:
        raise InvalidInput("refund amount must be positive", code="amount_not_positive")
    if not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    if refund_id is not None:
        existing = await session.get(Refund, refund_id)
        if existing is not None:
            if (existing.receipt_id, existing.amount) != (receipt_id, amount):
                raise Conflict("refund id reused with another request", code="refund_id_reused")
            return existing
    receipt = await session.scalar(
        select(Receipt).where(Receipt.id == receipt_id).with_for_update()
    )
    if receipt is None:
        raise NotFound(f"no receipt {receipt_id}", code="receipt_not_found")
    bill = await session.get(Bill, receipt.bill_id, with_for_update=True)
    assert bill is not None
    if agency_id is not None and bill.agency_id != agency_id:
        raise NotFound(f"no receipt {receipt_id}", code="receipt_not_found")
    if receipt.kind == "PAYMENT":
        blocked = await session.scalar(
            select(RevenueItem.code)
            .join(BillLine, BillLine.item_code == RevenueItem.code)
            .where(BillLine.bill_id == bill.id, RevenueItem.refundable.is_(False))
            .limit(1)
        )
        if blocked is not None:
            raise InvalidInput(f"item {blocked} is not refundable", code="not_refundable")
    available = receipt.amount - receipt.refunded_amount
    if amount > available:
        raise InvalidInput(
            f"refund of {amount} fen exceeds the {available} fen available",
            code="exceeds_available",
            available=available,
        )
    receipt.refunded_amount += amount
    refund = Refund(
        id=refund_id or uuid.uuid4(),
        receipt_id=receipt.id,
        bill_id=bill.id,
        amount=amount,
        route="CHANNEL" if receipt.status == "CONFIRMED" else "TREASURY",
        reason=reason.strip(),
        requested_by_type=actor.type,
        requested_by_id=actor.id,
    )
    session.add(refund)
    await session.flush()
    if refund.route == "CHANNEL":
        await outbox.enqueue(
            session,
            TOPIC_EXECUTE,
            f"refund:{refund.id}",
            {"refund_id": str(refund.id), "receipt_id": str(receipt.id)},
        )
    audit.record(
        session,
        actor_type=actor.type,
        actor_id=actor.id,
        action="refund.request",
        object_type="refund",
        object_id=str(refund.id),
        detail={"receipt_id": str(receipt.id), "amount": amount, "route": refund.route},
    )
    log.info("refund requested", refund_id=str(refund.id), route=refund.route, amount=amount)
    return refund


async def mark_processing(session: AsyncSession, refund_id: uuid.UUID) -> Refund:
    """Claim a refund for sending (REQUESTED/FAILED/UNKNOWN → PROCESSING)."""
    refund = await _locked(session, refund_id)
    REFUND.check(refund.status, RefundStatus.PROCESSING)
    refund.status = RefundStatus.PROCESSING
    await session.flush()
    return refund


async def complete_refund(
    session: AsyncSession,
    refund_id: uuid.UUID,
    *,
    succeeded: bool,
    channel_refund_no: str | None = None,
    failure_code: str | None = None,
    when: datetime | None = None,
) -> Refund:
    """Record a refund's final outcome, with every consequence, in the caller's transaction."""
    refund = await _locked(session, refund_id)
    target = RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED
    if refund.status == target:
        return refund  # a repeated outcome (e.g. a second notification) changes nothing
    REFUND.check(refund.status, target)
    receipt = await session.get(Receipt, refund.receipt_id, with_for_update=True)
    bill = await session.get(Bill, refund.bill_id, with_for_update=True)
    assert receipt is not None
    assert bill is not None
    refund.status = target
    refund.completed_at = when or datetime.now(UTC)
    refund.channel_refund_no = channel_refund_no or refund.channel_refund_no
    if not succeeded:
        refund.failure_code = failure_code
        receipt.refunded_amount -= refund.amount  # release the reservation
        await session.flush()
        return refund
    if receipt.kind == "PAYMENT":
        bill.refunded_amount += refund.amount
        new = (
            BillStatus.REFUNDED
            if bill.refunded_amount == bill.paid_amount
            else BillStatus.PARTIALLY_REFUNDED
        )
        BILL.check(bill.status, new)
        bill.status = new
    if refund.route == "CHANNEL":
        await ledger.post_refund(session, refund, receipt)
    data = {
        "refund_id": str(refund.id),
        "amount": refund.amount,
        "route": refund.route,
        "bill_refunded_amount": bill.refunded_amount,
        "bill_status": bill.status,
        "duplicate": receipt.kind == "DUPLICATE",
    }
    await outbox.enqueue(
        session,
        TOPIC_WEBHOOK,
        f"bill.refunded:{refund.id}",
        {
            "agency_id": str(bill.agency_id),
            "event": "bill.refunded",
            "bill_id": str(bill.id),
            "data": data,
        },
    )
    if receipt.kind == "PAYMENT":
        await outbox.enqueue(
            session,
            TOPIC_RED_LETTER,
            f"enote-red:{refund.id}",
            {"bill_id": str(bill.id), "refund_id": str(refund.id), "amount": refund.amount},
        )
    await session.flush()
    log.info("refund completed", refund_id=str(refund.id), route=refund.route)
    return refund


async def _locked(session: AsyncSession, refund_id: uuid.UUID) -> Refund:
    refund = await session.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())
    if refund is None:
        raise NotFound(f"no refund {refund_id}", code="refund_not_found")
    return refund
