"""Asynchronous channel notifications, channel-agnostic.

parse (the adapter verifies signature and app id) → the order must exist on that channel
and the amount must equal the attempt's → confirm → acknowledge. Anything unverifiable
changes nothing, is logged, and only schedules a query of the order it names (if any), so a
forged message can at most make us ask the channel what really happened.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

import structlog
from sqlalchemy import select, update

from channels.base import InvalidNotification, TradeState
from payments.attempts import OPEN
from payments.confirm import ConfirmOutcome, confirm_payment
from payments.context import PaymentContext
from payments.models import PaymentAttempt

__all__ = [
    "NotifyResult",
    "handle_notification",
]

log = structlog.get_logger(__name__)

_ID_FIELDS = ("out_trade_no", "order_id", "attempt_id")


@dataclass(frozen=True, slots=True)
class NotifyResult:
    ack: bool
    outcome: str


def attempt_id_from_raw(body: bytes) -> uuid.UUID | None:
    """Best effort: the order id an unverified body names (form or JSON), if any."""
    text = body.decode("utf-8", errors="replace")
    candidates: list[str] = []
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            candidates += [str(doc[k]) for k in _ID_FIELDS if k in doc]
    except ValueError:
        form = parse_qs(text)
        candidates += [form[k][0] for k in _ID_FIELDS if form.get(k)]
    for c in candidates:
        try:
            return uuid.UUID(c)
        except ValueError:
            continue
    return None


async def schedule_query(ctx: PaymentContext, channel: str, attempt_id: uuid.UUID) -> bool:
    """Make the recovery job look at this open attempt now."""
    async with ctx.sessions() as s, s.begin():
        result = await s.execute(
            update(PaymentAttempt)
            .where(
                PaymentAttempt.id == attempt_id,
                PaymentAttempt.channel == channel,
                PaymentAttempt.status.in_(OPEN),
            )
            .values(next_check_at=datetime.now(UTC))
        )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


async def handle_notification(  # noqa: PLR0911 - each outcome answers the channel
    ctx: PaymentContext, channel: str, body: bytes, content_type: str
) -> NotifyResult:
    adapter = ctx.channels.get(channel)
    try:
        note = adapter.parse_notification(body, content_type)
    except InvalidNotification as exc:
        named = attempt_id_from_raw(body)
        scheduled = named is not None and await schedule_query(ctx, channel, named)
        log.warning(
            "unverifiable notification",
            channel=channel,
            reason=exc.code,
            named_attempt=str(named) if named else None,
            query_scheduled=scheduled,
        )
        return NotifyResult(ack=False, outcome="UNVERIFIED")
    bound = log.bind(channel=channel, notify_id=note.notify_id, attempt_id=note.attempt_id)
    try:
        attempt_id = uuid.UUID(note.attempt_id)
    except ValueError:
        bound.warning("notification for an order we never issued")
        return NotifyResult(ack=False, outcome="UNKNOWN_ORDER")
    if note.refund_id is not None or note.state not in (TradeState.SUCCEEDED, TradeState.FINISHED):
        # Refund and close notices carry nothing we must act on at once; a query settles it.
        if not await schedule_query(ctx, channel, attempt_id) and not await _known(
            ctx, channel, attempt_id
        ):
            bound.warning("notification for an order we never issued on this channel")
            return NotifyResult(ack=False, outcome="UNKNOWN_ORDER")
        return NotifyResult(ack=True, outcome="NOTED")
    if note.amount is None:
        if not await _known(ctx, channel, attempt_id):
            bound.warning("notification for an order we never issued on this channel")
            return NotifyResult(ack=False, outcome="UNKNOWN_ORDER")
        await schedule_query(ctx, channel, attempt_id)
        return NotifyResult(ack=False, outcome="NO_AMOUNT")
    # The hot path: the confirmation's own locking read checks the order is ours on this
    # channel (UNKNOWN_ATTEMPT otherwise), so no separate look-up first.
    result = await confirm_payment(
        ctx.sessions,
        ctx.redis,
        attempt_id=attempt_id,
        channel_trade_no=note.channel_trade_no,
        amount=note.amount,
        paid_at=note.paid_at or datetime.now(UTC),
        source=f"notify:{channel}",
        cutoff=ctx.cutoff,
        channel=channel,
    )
    if result.outcome == ConfirmOutcome.UNKNOWN_ATTEMPT:
        bound.warning("notification for an order we never issued on this channel")
        return NotifyResult(ack=False, outcome="UNKNOWN_ORDER")
    if not result.acknowledged:
        bound.warning("notification not applied", outcome=result.outcome)
        if result.outcome == ConfirmOutcome.REJECTED_AMOUNT:
            await schedule_query(ctx, channel, attempt_id)
        return NotifyResult(ack=False, outcome=result.outcome)
    return NotifyResult(ack=True, outcome=result.outcome)


async def _known(ctx: PaymentContext, channel: str, attempt_id: uuid.UUID) -> bool:
    async with ctx.sessions() as s:
        known = await s.scalar(
            select(PaymentAttempt.channel).where(PaymentAttempt.id == attempt_id)
        )
    return known == channel
