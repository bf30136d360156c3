"""Confirming a payment exactly once.

`confirm_payment` is the one place a channel's "this attempt was paid" becomes a receipt.
One transaction: lock the bill row, move the attempt to SUCCEEDED through the ATTEMPT
machine (guarded UPDATE), insert the receipt, move the bill ISSUED → PAID (with its event,
audit row and outbox messages). The unique indexes on `receipts` are the final guard: a
concurrent or repeated confirmation that slips past the state checks fails on them, rolls
back whole and is answered ALREADY_CONFIRMED. A short Redis lock per bill in front only
reduces contention; with Redis down the database lock alone is enough.

Money is never dropped: a confirmation for a bill that can no longer be paid (already paid
through another attempt, cancelled, expired, or an exam fee / tuition paid after its hard
deadline) is recorded as a DUPLICATE receipt with an automatic channel refund (退付).
A success arriving after our expiry job CLOSED the attempt is applied as the payment when
the bill is still ISSUED (for fines this is the point: the money arrived, the fine is paid;
EXAM_FEE/TUITION judge by the channel's paid_at against the bill's expiry), otherwise it
is a duplicate and refunded.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import audit, outbox
from billing.audit import Actor
from billing.models import Bill, BillEvent
from billing.states import ATTEMPT, BILL, AttemptStatus, BillStatus
from settlement import bills, ledger, refunds
from settlement.business_day import business_date
from settlement.models import PaymentAttempt, Receipt

log = structlog.get_logger(__name__)

LOCK_TTL_S = 5.0


class ConfirmOutcome(StrEnum):
    APPLIED = "APPLIED"
    """This confirmation paid the bill."""
    ALREADY_CONFIRMED = "ALREADY_CONFIRMED"
    """The same confirmation was recorded before: nothing changed; acknowledge it."""
    DUPLICATE_REFUNDING = "DUPLICATE_REFUNDING"
    """Real money for a bill that cannot take it: a DUPLICATE receipt and a refund."""
    REJECTED_AMOUNT = "REJECTED_AMOUNT"
    """The amount differs from the attempt's: nothing recorded; query the channel."""
    REJECTED_STATE = "REJECTED_STATE"
    """The attempt cannot succeed (FAILED, or succeeded with another channel trade)."""
    UNKNOWN_ATTEMPT = "UNKNOWN_ATTEMPT"


ACKNOWLEDGED = frozenset(
    {
        ConfirmOutcome.APPLIED,
        ConfirmOutcome.ALREADY_CONFIRMED,
        ConfirmOutcome.DUPLICATE_REFUNDING,
    }
)


@dataclass(frozen=True, slots=True)
class ConfirmResult:
    outcome: ConfirmOutcome
    attempt_id: uuid.UUID
    bill_id: uuid.UUID | None = None
    receipt_id: uuid.UUID | None = None
    refund_id: uuid.UUID | None = None
    receipt_kind: str | None = None
    """PAYMENT or DUPLICATE when known."""

    @property
    def acknowledged(self) -> bool:
        return self.outcome in ACKNOWLEDGED


def bill_is_payable(bill: Bill, paid_at: datetime) -> bool:
    """Whether money paid at `paid_at` can be this bill's payment (see the module doc)."""
    if bill.status != BillStatus.ISSUED:
        return False
    return not (bill.category in bills.FIXED_DEADLINE_CATEGORIES and paid_at > bill.expires_at)


@contextlib.asynccontextmanager
async def bill_lock(redis: aioredis.Redis | None, bill_id: uuid.UUID) -> AsyncIterator[None]:
    """A short per-bill Redis lock that serialises confirmations before they reach Postgres.

    Best effort only: if Redis is down or the lock is not had in time, go on — the row lock
    and the unique indexes decide.
    """
    lock = None
    if redis is not None:
        try:
            lock = redis.lock(
                f"lock:bill:{bill_id}", timeout=LOCK_TTL_S, blocking_timeout=LOCK_TTL_S
            )
            if not await lock.acquire():
                lock = None
        except RedisError:
            log.warning("bill lock unavailable; relying on the database lock")
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(RedisError):  # expired or Redis gone: nothing to release
                await lock.release()


async def confirm_payment(
    sessions: async_sessionmaker[AsyncSession],
    redis: aioredis.Redis | None,
    *,
    attempt_id: uuid.UUID,
    channel_trade_no: str | None,
    amount: int,
    paid_at: datetime,
    source: str,
    cutoff: time = time(0, 0),
    bill_id: uuid.UUID | None = None,
) -> ConfirmResult:
    """Record that the channel took `amount` fen for this attempt; safe to call any number
    of times, concurrently. `source` says who told us (notify, query, bank confirm...).
    `bill_id`, when the caller knows it, saves a lookup (it is checked in the transaction)."""
    bound = log.bind(attempt_id=str(attempt_id), source=source)
    if bill_id is None:
        async with sessions() as s:
            bill_id = await s.scalar(
                select(PaymentAttempt.bill_id).where(PaymentAttempt.id == attempt_id)
            )
    if bill_id is None:
        bound.warning("confirmation for an unknown attempt")
        return ConfirmResult(ConfirmOutcome.UNKNOWN_ATTEMPT, attempt_id)
    async with bill_lock(redis, bill_id):
        try:
            async with sessions() as s, s.begin():
                result, payment_code = await _apply(
                    s,
                    attempt_id=attempt_id,
                    bill_id=bill_id,
                    channel_trade_no=channel_trade_no,
                    amount=amount,
                    paid_at=paid_at,
                    source=source,
                    cutoff=cutoff,
                )
        except IntegrityError as exc:
            # The unique indexes caught a confirmation the state checks did not: the whole
            # transaction is rolled back, which is exactly "changes nothing".
            bound.info("confirmation already recorded", constraint=str(exc.orig)[:200])
            return ConfirmResult(ConfirmOutcome.ALREADY_CONFIRMED, attempt_id, bill_id)
    if result.outcome in {ConfirmOutcome.APPLIED, ConfirmOutcome.DUPLICATE_REFUNDING}:
        if redis is not None:
            await bills.invalidate(redis, payment_code)
        bound.info("payment confirmed", outcome=result.outcome, bill_id=str(bill_id))
    return result


async def _apply(  # noqa: PLR0911 - each guard answers with its own outcome
    s: AsyncSession,
    *,
    attempt_id: uuid.UUID,
    bill_id: uuid.UUID,
    channel_trade_no: str | None,
    amount: int,
    paid_at: datetime,
    source: str,
    cutoff: time,
) -> tuple[ConfirmResult, str]:
    bill = await s.scalar(select(Bill).where(Bill.id == bill_id).with_for_update())
    attempt = await s.scalar(
        select(PaymentAttempt).where(PaymentAttempt.id == attempt_id).with_for_update()
    )
    if bill is None or attempt is None or attempt.bill_id != bill.id:
        return ConfirmResult(ConfirmOutcome.UNKNOWN_ATTEMPT, attempt_id), ""
    code = bill.payment_code
    if channel_trade_no and attempt.channel_trade_no not in (None, channel_trade_no):
        log.error(
            "confirmation names another channel trade for this attempt",
            attempt_id=str(attempt_id),
            known=attempt.channel_trade_no,
            got=channel_trade_no,
        )
        return ConfirmResult(ConfirmOutcome.REJECTED_STATE, attempt_id, bill_id), code
    if amount != attempt.amount:
        log.warning(
            "confirmation amount differs",
            attempt_id=str(attempt_id),
            expected=attempt.amount,
            got=amount,
        )
        return ConfirmResult(ConfirmOutcome.REJECTED_AMOUNT, attempt_id, bill_id), code
    if attempt.status == AttemptStatus.SUCCEEDED:
        row = (
            await s.execute(
                select(Receipt.id, Receipt.kind).where(Receipt.attempt_id == attempt_id)
            )
        ).first()
        return (
            ConfirmResult(
                ConfirmOutcome.ALREADY_CONFIRMED,
                attempt_id,
                bill_id,
                row.id if row else None,
                receipt_kind=row.kind if row else None,
            ),
            code,
        )

    # The attempt: CREATED goes through PENDING (both edges are in the machine).
    path = [attempt.status]
    if attempt.status == AttemptStatus.CREATED:
        path.append(AttemptStatus.PENDING)
    path.append(AttemptStatus.SUCCEEDED)
    if not all(ATTEMPT.allowed(a, b) for a, b in itertools.pairwise(path)):
        log.error("success for an attempt that cannot succeed", status=attempt.status)
        return ConfirmResult(ConfirmOutcome.REJECTED_STATE, attempt_id, bill_id), code
    changed = await s.execute(
        update(PaymentAttempt)
        .where(PaymentAttempt.id == attempt_id, PaymentAttempt.status == attempt.status)
        .values(
            status=AttemptStatus.SUCCEEDED,
            channel_trade_no=channel_trade_no or attempt.channel_trade_no,
        )
    )
    assert changed.rowcount == 1  # type: ignore[attr-defined]  # we hold the row lock

    payable = bill_is_payable(bill, paid_at)
    receipt = Receipt(
        id=uuid.uuid4(),
        bill_id=bill.id,
        attempt_id=attempt.id,
        channel=attempt.channel,
        channel_trade_no=channel_trade_no or attempt.channel_trade_no,
        kind="PAYMENT" if payable else "DUPLICATE",
        amount=amount,
        late_fee_amount=max(0, amount - bill.principal_amount) if payable else 0,
        paid_at=paid_at,
        business_date=business_date(paid_at, cutoff),
    )
    s.add(receipt)
    await s.flush()  # the unique indexes speak here
    await ledger.post_receipt(s, receipt)  # same transaction: the books never lag the money
    if payable:
        BILL.check(bill.status, BillStatus.PAID)
        await s.execute(
            update(Bill)
            .where(Bill.id == bill.id, Bill.status == BillStatus.ISSUED)
            .values(status=BillStatus.PAID, paid_amount=amount, paid_at=paid_at)
        )
        s.add(
            BillEvent(
                bill_id=bill.id,
                from_status=BillStatus.ISSUED,
                to_status=BillStatus.PAID,
                actor_type="system",
                actor_id=source[:64],
                reason="payment confirmed",
                detail={"attempt_id": str(attempt.id), "receipt_id": str(receipt.id)},
            )
        )
        audit.record(
            s,
            actor_type="system",
            actor_id=source[:64],
            action="payment.confirmed",
            object_type="bill",
            object_id=str(bill.id),
            detail={"attempt_id": str(attempt.id), "receipt_id": str(receipt.id), "amount": amount},
        )
        await outbox.enqueue(
            s,
            "webhook.event",
            f"bill.paid:{bill.id}",
            {
                "event": "bill.paid",
                "agency_id": str(bill.agency_id),
                "bill_id": str(bill.id),
                "data": {
                    "agency_bill_no": bill.agency_bill_no,
                    "payment_code": bill.payment_code,
                    "amount": amount,
                    "late_fee": receipt.late_fee_amount,
                    "channel": attempt.channel,
                    "attempt_id": str(attempt.id),
                    "receipt_id": str(receipt.id),
                    "paid_at": paid_at.isoformat(),
                    "business_date": receipt.business_date.isoformat(),
                },
            },
        )
        await outbox.enqueue(
            s, "enote.issue", f"enote.issue:{receipt.id}", {"receipt_id": str(receipt.id)}
        )
        return (
            ConfirmResult(
                ConfirmOutcome.APPLIED, attempt_id, bill.id, receipt.id, receipt_kind="PAYMENT"
            ),
            code,
        )

    # The guarded request reserves the amount on the receipt and queues the channel refund.
    refund = await refunds.request_refund(
        s,
        receipt_id=receipt.id,
        amount=amount,
        reason="duplicate payment",
        actor=Actor("system", "confirm"),
    )
    audit.record(
        s,
        actor_type="system",
        actor_id=source[:64],
        action="payment.duplicate",
        object_type="bill",
        object_id=str(bill.id),
        detail={
            "attempt_id": str(attempt.id),
            "receipt_id": str(receipt.id),
            "refund_id": str(refund.id),
            "bill_status": bill.status,
            "amount": amount,
        },
    )
    log.warning(
        "duplicate payment recorded; refund opened",
        bill_id=str(bill.id),
        bill_status=bill.status,
        refund_id=str(refund.id),
    )
    return (
        ConfirmResult(
            ConfirmOutcome.DUPLICATE_REFUNDING,
            attempt_id,
            bill.id,
            receipt.id,
            refund.id,
            receipt_kind="DUPLICATE",
        ),
        code,
    )
