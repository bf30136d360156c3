"""Payment attempts: create one (claim → call → record), read one, recover open ones.

No database transaction is open while a channel is called. The amount is always the
server's amount due now (principal + late fee for today, Asia/Shanghai); clients never
send one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing import payer as bills
from billing.models import Bill
from channels.base import (
    ChannelAdapter,
    CreatedPayment,
    CreatePayment,
    OutcomeUnknown,
    PaymentStatus,
    Rejected,
    TradeState,
    Unavailable,
)
from kernel.clock import shanghai_today
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.errors import Unavailable as ServiceUnavailable
from payments.confirm import ConfirmOutcome, confirm_payment
from payments.context import PaymentContext
from payments.models import PaymentAttempt
from payments.states import ATTEMPT, AttemptStatus

__all__ = [
    "OPEN",
    "AttemptView",
    "create_attempt",
    "get_attempt",
    "recover_attempts",
]

log = structlog.get_logger(__name__)

OPEN = (AttemptStatus.CREATED, AttemptStatus.PENDING, AttemptStatus.UNKNOWN)
MIN_BACKOFF = timedelta(minutes=1)
MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AttemptView:
    id: uuid.UUID
    bill_id: uuid.UUID
    channel: str
    mode: str
    status: str
    amount: int
    expires_at: datetime
    client_payload: dict[str, Any] = field(default_factory=dict)
    failure_code: str | None = None
    bill_status: str | None = None


def _view(a: PaymentAttempt, bill_status: str | None = None) -> AttemptView:
    return AttemptView(
        id=a.id,
        bill_id=a.bill_id,
        channel=a.channel,
        mode=a.mode,
        status=a.status,
        amount=a.amount,
        expires_at=a.expires_at,
        client_payload=dict(a.client_payload or {}),
        failure_code=a.failure_code,
        bill_status=bill_status,
    )


async def move(s: AsyncSession, attempt_id: uuid.UUID, src: str, dst: str, **values: Any) -> bool:
    """Guarded transition: True if the attempt was still in `src` and is now in `dst`."""
    ATTEMPT.check(src, dst)
    result = await s.execute(
        update(PaymentAttempt)
        .where(PaymentAttempt.id == attempt_id, PaymentAttempt.status == src)
        .values(status=dst, **values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


AMOUNT_DIFFERS = "amount_differs"
"""failure_code of an attempt whose channel took another amount than ours."""


async def fail_for_amount(ctx: PaymentContext, attempt_id: uuid.UUID, channel: str) -> bool:
    """The channel took another amount than the attempt's, and we refused it: the attempt
    can never succeed, so it ends FAILED (from any state the machine allows) instead of
    staying open to be queried forever. The money, if the channel keeps it, is
    reconciliation's (a channel-only line naming a failed attempt stays open for a person).
    """
    async with ctx.sessions() as s, s.begin():
        result = await s.execute(
            update(PaymentAttempt)
            .where(
                PaymentAttempt.id == attempt_id,
                PaymentAttempt.channel == channel,
                PaymentAttempt.status.in_(ATTEMPT.sources(AttemptStatus.FAILED)),
            )
            .values(status=AttemptStatus.FAILED, failure_code=AMOUNT_DIFFERS)
        )
    ended = bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE
    if ended:
        log.warning("attempt failed: the channel took another amount", attempt_id=str(attempt_id))
    return ended


def _adapter(ctx: PaymentContext, channel: str) -> ChannelAdapter:
    if channel not in ctx.channels:
        raise InvalidInput(
            f"Unknown channel {channel!r}; available: {', '.join(ctx.channels.names())}.",
            code="unknown_channel",
        )
    return ctx.channels.get(channel)


def _mode(adapter: ChannelAdapter, mode: str) -> str:
    """A channel that lists its modes refuses others up front (422, nothing written) —
    they would otherwise fail inside the adapter after the attempt row was committed —
    and reads "default" as its first mode. Channels without a list take any mode."""
    modes: tuple[str, ...] = getattr(adapter, "modes", ())
    if not modes:
        return mode
    if mode == "default":
        return modes[0]
    if mode not in modes:
        raise InvalidInput(
            f"Channel {adapter.name!r} has no mode {mode!r}; one of: {', '.join(modes)}.",
            code="unsupported_mode",
        )
    return mode


async def create_attempt(
    ctx: PaymentContext,
    *,
    payment_code: str,
    channel: str,
    mode: str,
    now: datetime | None = None,
    return_url: str | None = None,
) -> AttemptView:
    now = now or datetime.now(UTC)
    adapter = _adapter(ctx, channel)
    mode = _mode(adapter, mode)
    # 1. claim: the intent is committed before anything is sent.
    async with ctx.sessions() as s, s.begin():
        view = await bills.load_view(s, payment_code=payment_code)
        if view is None:
            raise NotFound("No bill has this payment code.", code="bill_not_found")
        refused = bills.refusal(view, now)
        if refused is not None:
            raise Conflict(refused[1], code=refused[0])
        amount = bills.due_on(view, shanghai_today(now), ctx.day_count).total
        expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
        if view.category in bills.FIXED_DEADLINE_CATEGORIES:
            expires_at = min(expires_at, view.expires_at)
        attempt = PaymentAttempt(
            id=uuid.uuid4(),
            bill_id=view.bill_id,
            channel=channel,
            mode=mode,
            status=AttemptStatus.CREATED,
            amount=amount,
            expires_at=expires_at,
            next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
        )
        s.add(attempt)
    subject = f"{view.agency_name} {view.lines[0].name}" if view.lines else view.agency_name
    req = CreatePayment(
        attempt_id=str(attempt.id),
        amount=amount,
        subject=subject[:120],
        mode=mode,
        expires_at=expires_at,
        notify_url=f"{ctx.public_url}/v1/channels/{channel}/notify",
        return_url=return_url,
    )
    bound = log.bind(attempt_id=str(attempt.id), channel=channel, bill_id=str(view.bill_id))
    # 2. call, with no transaction open.
    created: CreatedPayment | None = None
    dst, failure, unavailable = AttemptStatus.PENDING, None, False
    try:
        created = await adapter.create_payment(req)
    except Rejected as exc:
        dst, failure = AttemptStatus.FAILED, exc.code or "rejected"
    except Unavailable as exc:
        dst, failure, unavailable = AttemptStatus.FAILED, exc.code or "unavailable", True
    except OutcomeUnknown:
        dst = AttemptStatus.UNKNOWN  # the recovery job will query it
    # 3. record, guarded by the state we left it in.
    payload: dict[str, Any] = {}
    if created is not None:
        payload = {
            k: v
            for k, v in (
                ("qr_content", created.qr_content),
                ("redirect_url", created.redirect_url),
                ("instructions", created.instructions),
            )
            if v is not None
        }
    async with ctx.sessions() as s, s.begin():
        values: dict[str, Any] = {"client_payload": payload, "failure_code": failure}
        if created is not None and created.channel_trade_no:
            values["channel_trade_no"] = created.channel_trade_no
        await move(s, attempt.id, AttemptStatus.CREATED, dst, **values)
    bound.info("payment attempt created", status=dst, failure=failure)
    if unavailable:
        raise ServiceUnavailable(
            "The payment channel is unavailable; nothing was charged, please retry.",
            code="channel_unavailable",
            retry_after=5,
        )
    return await get_attempt(ctx, attempt.id)


async def get_attempt(ctx: PaymentContext, attempt_id: uuid.UUID) -> AttemptView:
    async with ctx.sessions() as s:
        row = (
            await s.execute(
                select(PaymentAttempt, Bill.status)
                .join(Bill, Bill.id == PaymentAttempt.bill_id)
                .where(PaymentAttempt.id == attempt_id)
            )
        ).first()
    if row is None:
        raise NotFound("No such payment attempt.", code="attempt_not_found")
    return _view(row[0], row[1])


# ------------------------------------------------------------------ recovery


def _backoff(now: datetime, created_at: datetime) -> timedelta:
    """Query again after a third of the attempt's age, between 1 minute and 1 hour."""
    return max(MIN_BACKOFF, min(MAX_BACKOFF, (now - created_at) / 3))


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: uuid.UUID
    channel: str
    status: str
    amount: int
    expires_at: datetime


async def recover_attempts(
    ctx: PaymentContext, *, now: datetime | None = None, limit: int = 50
) -> int:
    """Query open attempts that are due (the notification may never come); close expired.

    Claimed with SKIP LOCKED and pushed back (next_check_at) in a short transaction, so
    several workers share the work and a crash only delays the next check.
    """
    now = now or datetime.now(UTC)
    async with ctx.sessions() as s, s.begin():
        rows = (
            await s.scalars(
                select(PaymentAttempt)
                .where(PaymentAttempt.status.in_(OPEN), PaymentAttempt.next_check_at <= now)
                .order_by(PaymentAttempt.next_check_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        claimed = []
        for a in rows:
            nxt = now + _backoff(now, a.created_at)
            a.next_check_at = nxt if now >= a.expires_at else min(nxt, a.expires_at)
            claimed.append(_Claimed(a.id, a.channel, a.status, a.amount, a.expires_at))
    for c in claimed:
        if c.channel not in ctx.channels:
            log.error("open attempt on an unregistered channel", attempt_id=str(c.id))
            continue
        adapter = ctx.channels.get(c.channel)
        bound = structlog.contextvars.bound_contextvars(attempt_id=str(c.id), channel=c.channel)
        with bound:
            try:
                if now >= c.expires_at:
                    await _expire(ctx, adapter, c, now)
                else:
                    await _settle_from(ctx, c, await adapter.query_payment(str(c.id)), now)
            except (Unavailable, OutcomeUnknown, Rejected) as exc:
                log.info("attempt check deferred", error=type(exc).__name__, code=exc.code)
    return len(claimed)


async def _settle_from(
    ctx: PaymentContext, c: _Claimed, status: PaymentStatus, now: datetime
) -> None:
    """Apply what the channel says about an open attempt."""
    if status.state in (TradeState.SUCCEEDED, TradeState.FINISHED):
        result = await confirm_payment(
            ctx.sessions,
            ctx.redis,
            attempt_id=c.id,
            channel_trade_no=status.channel_trade_no,
            amount=status.amount if status.amount is not None else c.amount,
            paid_at=status.paid_at or now,
            source=f"query:{c.channel}",
            cutoff=ctx.cutoff,
            channel=c.channel,
            pay_mode=status.pay_mode,
        )
        if result.outcome == ConfirmOutcome.REJECTED_AMOUNT:
            await fail_for_amount(ctx, c.id, c.channel)
            return
        log.info("attempt confirmed by query", outcome=result.outcome)
        return
    async with ctx.sessions() as s, s.begin():
        if status.state == TradeState.CLOSED:
            dst = (
                AttemptStatus.FAILED if c.status == AttemptStatus.CREATED else AttemptStatus.CLOSED
            )
            await move(s, c.id, c.status, dst)
        elif status.state == TradeState.PENDING and c.status != AttemptStatus.PENDING:
            await move(s, c.id, c.status, AttemptStatus.PENDING)
        # NOT_FOUND (not scanned yet) and PENDING: keep waiting until the expiry.


async def _expire(ctx: PaymentContext, adapter: ChannelAdapter, c: _Claimed, now: datetime) -> None:
    """Close at the channel, then locally. A refused close may mean it was paid: query."""
    try:
        await adapter.close_payment(str(c.id))
        state = TradeState.CLOSED
    except Rejected as exc:
        log.info("close refused; querying", code=exc.code)
        status = await adapter.query_payment(str(c.id))
        if status.state in (TradeState.SUCCEEDED, TradeState.FINISHED, TradeState.PENDING):
            await _settle_from(ctx, c, status, now)
            return
        state = TradeState.CLOSED  # NOT_FOUND or CLOSED: nothing was paid
    await _settle_from(ctx, c, PaymentStatus(attempt_id=str(c.id), state=state), now)
    log.info("attempt closed at expiry")
