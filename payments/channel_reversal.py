"""A channel's reversal (冲正) of a confirmation it sent us, named by its own reference
(a bank serial): the payment is taken back as if it never happened (payments.reversal).

Rules, the same for any channel that confirms by reference:
- only the same business day as the confirmation (after the cutoff the money has moved
  on: it goes back as a refund instead) → otherwise TOO_LATE;
- the payment code and amount must be the confirmation's (AMOUNT_DIFFERS / NOT_CONFIRMED);
- a reference we never recorded is NOT_CONFIRMED and changes nothing: a channel whose
  confirmation's outcome it does not know sends the reversal again later (once the
  confirmation has arrived, the reversal takes it back; the day-end check shows one
  that never did);
- a reversal sent again answers as the first did (REVERSED);
- money recorded as a duplicate (being refunded) is not reversed: TOO_LATE.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import payer as bills
from kernel.clock import business_date
from kernel.kv import KV
from payments.confirm import core_transaction
from payments.reversal import Undone, undo_payment

log = structlog.get_logger(__name__)


class Reversal(StrEnum):
    REVERSED = "REVERSED"
    NOT_CONFIRMED = "NOT_CONFIRMED"
    AMOUNT_DIFFERS = "AMOUNT_DIFFERS"
    TOO_LATE = "TOO_LATE"


@dataclass(frozen=True, slots=True)
class ReversalResult:
    outcome: Reversal
    attempt_id: uuid.UUID | None = None
    receipt_id: uuid.UUID | None = None


_FIND = text(
    "SELECT a.id AS attempt_id, a.amount, b.payment_code, r.id AS receipt_id,"
    " r.business_date FROM payment_attempts a JOIN bills b ON b.id = a.bill_id"
    " LEFT JOIN receipts r ON r.attempt_id = a.id"
    " WHERE a.channel = :channel AND a.channel_trade_no = :reference"
)


async def reverse_confirmation(
    sessions: async_sessionmaker[AsyncSession],
    redis: KV | None,
    *,
    channel: str,
    payment_code: str,
    reference: str,
    amount: int,
    reason: str,
    now: datetime,
    cutoff: time = time(0, 0),
) -> ReversalResult:
    bound = log.bind(channel=channel, reference=reference)
    async with core_transaction(sessions) as conn:
        row = (await conn.execute(_FIND, {"channel": channel, "reference": reference})).first()
        if row is None or row.payment_code != payment_code:
            bound.info("reversal of a confirmation we never recorded")
            return ReversalResult(Reversal.NOT_CONFIRMED)
        if row.amount != amount:
            return ReversalResult(Reversal.AMOUNT_DIFFERS, row.attempt_id)
        if row.business_date is not None and row.business_date != business_date(now, cutoff):
            return ReversalResult(Reversal.TOO_LATE, row.attempt_id, row.receipt_id)
        undone = await undo_payment(
            conn, attempt_id=row.attempt_id, reason=reason or "reversal", actor=f"reverse:{channel}"
        )
    if undone is None:  # the attempt vanished between the read and the lock: never happens
        return ReversalResult(Reversal.NOT_CONFIRMED)
    if undone.outcome == Undone.TOO_LATE:
        bound.info("reversal refused: settled, refunded or a duplicate")
        return ReversalResult(Reversal.TOO_LATE, row.attempt_id, undone.receipt_id)
    if undone.outcome == Undone.UNDONE and redis is not None:
        await bills.invalidate(redis, undone.payment_code)
    bound.info("confirmation reversed", outcome=undone.outcome)
    return ReversalResult(Reversal.REVERSED, row.attempt_id, undone.receipt_id)
