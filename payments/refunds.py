"""Refunds (退付): the request with its "amount available" guard, execution through the
channel, and the completion.

- A refund reserves its amount on the receipt at request time (`receipts.refunded_amount`),
  so two concurrent requests can never refund more than was paid; a failed refund releases
  its reservation. The receipt row is locked first (every entry point goes through
  `request_refund`), and the reservation itself is a guarded UPDATE.
- Route: before settlement (receipt CONFIRMED) the money goes back through the channel that
  took it (executed by the refund worker from the outbox, idempotent per refund id); after
  settlement (receipt SETTLED) it becomes a treasury refund (退库) line in the next deposit
  batch.
- On success: the bill's refunded amount and status move (PAYMENT receipts only; a
  duplicate was never the bill's payment), the ledger posts the refund, and outbox messages
  carry the `bill.refunded` webhook and the e-note red-letter (冲红) request.
- Execution is claim → call → record, like every channel operation. The `refund.execute`
  outbox message is leased (pushed back) while its refund is in flight, so a crash or an
  Unavailable channel lets it be claimed again; the refund id is the channel's idempotency
  key, so sending it twice refunds once. OutcomeUnknown parks the refund as UNKNOWN for
  `recover_refunds`, which queries the channel (and re-sends when it never saw it).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

import ledger
from billing import events as bill_events
from billing import payer as bills
from billing import webhooks
from billing.models import Bill, BillLine, RevenueItem
from billing.states import BillStatus
from channels.base import (
    OutcomeUnknown,
    RefundRequest,
    RefundResult,
    RefundState,
    Rejected,
    Unavailable,
)
from kernel import audit, crypto, outbox
from kernel.audit import Actor
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.models import OutboxMessage
from kernel.outbox import Topic
from payments.context import PaymentContext
from payments.models import Receipt, Refund
from payments.states import REFUND, RefundStatus

__all__ = [
    "TOPIC_EXECUTE",
    "TOPIC_RED_LETTER",
    "Payee",
    "complete_refund",
    "execute_refunds",
    "mark_processing",
    "recover_refunds",
    "request_refund",
]

log = structlog.get_logger(__name__)

TOPIC_EXECUTE = Topic.REFUND_EXECUTE
"""Channel refunds to send; consumed by `execute_refunds` below."""
TOPIC_RED_LETTER = Topic.ENOTE_RED
"""Red-letter (冲红) e-note requests for the e-note issuer (enotes): a refund's, or a taken-back
payment's (payments.reversal)."""

LEASE = timedelta(minutes=2)
STALE_PROCESSING = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Payee:
    """The bank account a treasury refund (退库) is paid to.

    After settlement the money is in the treasury, not with the channel: it comes back to
    the collection account in a deposit batch's REFUND line and is paid out by bank
    transfer (settlement.payouts). Stored encrypted on the refund (it is personal data);
    clear only in the payout instruction that goes to the bank.
    """

    name: str
    account: str
    bank: str

    def __post_init__(self) -> None:
        for field_, value, most in (("name", self.name, 64), ("bank", self.bank, 64)):
            if not value.strip() or len(value) > most or not value.isprintable():
                raise InvalidInput(
                    f"payee {field_} must be 1-{most} printable characters", code="payee_invalid"
                )
        digits = self.account.replace(" ", "")
        if not (digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 34):
            raise InvalidInput("payee account must be 8-34 digits", code="payee_invalid")

    def seal(self, refund_id: uuid.UUID) -> bytes:
        plain = json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()
        return crypto.encrypt(plain, aad=_payee_aad(refund_id))

    @classmethod
    def unseal(cls, token: bytes, refund_id: uuid.UUID) -> Payee:
        return cls(**json.loads(crypto.decrypt(token, aad=_payee_aad(refund_id))))


def _payee_aad(refund_id: uuid.UUID) -> bytes:
    # Bound to its refund: a sealed account copied onto another refund does not open.
    return b"refund_payee:" + refund_id.bytes


def _refundable(receipt: Receipt | None, receipt_id: uuid.UUID) -> Receipt:
    if receipt is None:
        raise NotFound(f"no receipt {receipt_id}", code="receipt_not_found")
    if receipt.kind == "REVERSED":
        # The channel gave the money back already (void, reversal): a refund would pay twice.
        raise Conflict(
            "this payment was taken back by the channel: there is nothing to refund",
            code="payment_reversed",
        )
    return receipt


async def request_refund(
    session: AsyncSession,
    *,
    receipt_id: uuid.UUID,
    amount: int,
    reason: str,
    actor: Actor,
    refund_id: uuid.UUID | None = None,
    agency_id: uuid.UUID | None = None,
    payee: Payee | None = None,
) -> Refund:
    """Open a refund, full or partial, never beyond what is still available.

    A refund after settlement (route TREASURY) is paid by bank transfer and needs the
    `payee`'s account (InvalidInput `payee_required` without it); before settlement the
    money goes back through the channel and no account is asked for (none is kept).

    `refund_id` makes the request idempotent: the same id with the same receipt and amount
    answers the existing refund; with anything else it is a conflict. `agency_id` (agency
    callers) restricts the request to the agency's own bills.
    """
    if amount <= 0:
        raise InvalidInput("refund amount must be positive", code="amount_not_positive")
    if not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    # The receipt row is the one lock every door (agency API, finance API, CLI,
    # reconciliation) takes first: requests on one receipt run one after another, and a
    # repeat of an idempotency key finds the refund its first request committed. Refreshed
    # from the locked row: an object this session read earlier must not answer for it.
    receipt = await session.scalar(
        select(Receipt)
        .where(Receipt.id == receipt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    receipt = _refundable(receipt, receipt_id)
    if refund_id is not None:
        existing = await session.get(Refund, refund_id, populate_existing=True)
        if existing is not None:
            if (existing.receipt_id, existing.amount) != (receipt_id, amount):
                raise Conflict("refund id reused with another request", code="refund_id_reused")
            return existing
    bill = await session.get(Bill, receipt.bill_id, with_for_update=True, populate_existing=True)
    assert bill is not None
    if agency_id is not None and bill.agency_id != agency_id:
        raise NotFound(f"no receipt {receipt_id}", code="receipt_not_found")
    if receipt.kind == "PAYMENT":
        await _refuse_unrefundable(session, bill.id)
    available = receipt.amount - receipt.refunded_amount  # the locked row's, refreshed
    if amount > available:
        raise InvalidInput(
            f"refund of {amount} fen exceeds the {available} fen available",
            code="exceeds_available",
            available=available,
        )
    route = "CHANNEL" if receipt.status == "CONFIRMED" else "TREASURY"
    if route == "TREASURY" and payee is None:
        raise InvalidInput(
            "this payment is settled: the refund is paid by bank transfer and needs the"
            " payee's account (name, account number, bank)",
            code="payee_required",
        )
    # The reservation is a guarded UPDATE: whatever this process believes, the database
    # adds the amount only while it still fits in what was paid.
    reserved = await session.scalar(
        update(Receipt)
        .where(Receipt.id == receipt.id, Receipt.refunded_amount + amount <= Receipt.amount)
        .values(refunded_amount=Receipt.refunded_amount + amount)
        .returning(Receipt.refunded_amount)
    )
    if reserved is None:
        available = receipt.amount - receipt.refunded_amount
        raise InvalidInput(
            f"refund of {amount} fen exceeds the {available} fen available",
            code="exceeds_available",
            available=available,
        )
    new_id = refund_id or uuid.uuid4()
    refund = Refund(
        id=new_id,
        receipt_id=receipt.id,
        bill_id=bill.id,
        amount=amount,
        route=route,
        payee_enc=payee.seal(new_id) if payee is not None and route == "TREASURY" else None,
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
            f"refund.execute:{refund.id}",
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


async def _refuse_unrefundable(session: AsyncSession, bill_id: uuid.UUID) -> None:
    blocked = await session.scalar(
        select(RevenueItem.code)
        .join(BillLine, BillLine.item_code == RevenueItem.code)
        .where(BillLine.bill_id == bill_id, RevenueItem.refundable.is_(False))
        .limit(1)
    )
    if blocked is not None:
        raise InvalidInput(f"item {blocked} is not refundable", code="not_refundable")


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
        bill_events.record(
            session,
            bill_id=bill.id,
            src=bill.status,
            dst=new,
            actor_type=refund.requested_by_type,
            actor_id=refund.requested_by_id,
            reason=refund.reason,
            detail={"refund_id": str(refund.id), "amount": refund.amount},
        )
        bill.status = new
    if refund.route == "CHANNEL":
        if refund.route != "CHANNEL":
            raise ledger.LedgerError(f"refund {refund.id} is a treasury refund; the sweep posts it")
        await ledger.post_refund(
            session,
            refund_id=refund.id,
            amount=refund.amount,
            receipt_kind=receipt.kind,
            channel=receipt.channel,
            business_date=receipt.business_date,
        )
    data = {
        "refund_id": str(refund.id),
        "amount": refund.amount,
        "route": refund.route,
        "bill_refunded_amount": bill.refunded_amount,
        "bill_status": bill.status,
        "duplicate": receipt.kind == "DUPLICATE",
    }
    await webhooks.emit(
        session,
        agency_id=bill.agency_id,
        event="bill.refunded",
        bill_id=bill.id,
        data=data,
        dedupe_key=f"bill.refunded:{refund.id}",
    )
    if receipt.kind == "PAYMENT":
        await outbox.enqueue(
            session, TOPIC_RED_LETTER, f"enote.red:{refund.id}", {"refund_id": str(refund.id)}
        )
    await session.flush()
    log.info("refund completed", refund_id=str(refund.id), route=refund.route)
    return refund


async def _locked(session: AsyncSession, refund_id: uuid.UUID) -> Refund:
    refund = await session.scalar(select(Refund).where(Refund.id == refund_id).with_for_update())
    if refund is None:
        raise NotFound(f"no refund {refund_id}", code="refund_not_found")
    return refund


# ------------------------------------------------------------------ execution


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
        for msg in await outbox.claim(s, TOPIC_EXECUTE, limit):
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
    """The channel's final word, recorded once through `complete_refund`."""
    if result.state not in (RefundState.SUCCEEDED, RefundState.FAILED):
        return  # PROCESSING: the channel is still working on it; recover_refunds will query
    code: str | None = None
    async with ctx.sessions() as s, s.begin():
        refund = await _locked(s, refund_id)
        if refund.status != src:
            return  # recorded by someone else already
        succeeded = result.state == RefundState.SUCCEEDED
        await complete_refund(
            s,
            refund_id,
            succeeded=succeeded,
            failure_code=None if succeeded else failure_code or "failed",
            when=result.refunded_at or now,
        )
        receipt = await s.get_one(Receipt, refund.receipt_id)
        if succeeded and receipt.kind == "PAYMENT":
            code = (await s.get_one(Bill, refund.bill_id)).payment_code
    if code is not None:
        await bills.invalidate(ctx.redis, code)


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
