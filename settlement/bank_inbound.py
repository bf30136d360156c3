"""The bank-initiated half of the bank interface (DOMAIN §5): query a bill, confirm a payment.

Decisions (documented here because the national practice does not settle them):
- A query opens (or reuses) a PENDING attempt on `bank:<code>` for today's amount due and
  answers its id as `order_id`. The bank echoes it in the confirm; if the confirm is lost,
  the recovery job queries the bank by that order id and confirms from the answer.
- 12005 (confirm without a prior query) is ACCEPTED: the amount check still applies, so
  the query is an aid, not a guard. Such a confirm opens an attempt keyed by bank serial.
- Idempotency is by bank serial: an identical repeat answers 00000; the same serial with
  another payment code or amount answers 12001.
- A confirm is money already taken from the customer. Rejected outright (nothing recorded,
  the bank reverses its debit) only when the message is wrong: unknown code (11001), check
  digit (11002), amount not the amount due (12004), conflicting repeat (12001). A bill that
  can no longer take the money (paid, cancelled, expired, past a hard deadline) gets a
  DUPLICATE receipt and an automatic refund, answered 00000 with disposition REFUND.
- 11005 (our addition, absent from the list we mirror): the bill is already paid.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from billing.late_fee import shanghai_today
from billing.models import Bill
from billing.payment_code import LENGTH, is_valid
from billing.states import AttemptStatus, BillStatus
from channels.bank.transforms import ResultCode, format_time, parse_time
from channels.money import fen_to_yuan, yuan_to_fen
from settlement import bills
from settlement.confirm import ConfirmOutcome, confirm_payment
from settlement.context import PaymentContext
from settlement.models import PaymentAttempt, Receipt

log = structlog.get_logger(__name__)

REUSE_MARGIN = timedelta(minutes=5)
NONCE_TTL_S = 900
ALREADY_PAID = "11005"


@dataclass(frozen=True, slots=True)
class BankAnswer:
    code: str
    msg: str
    data: dict[str, Any] | None = field(default=None)

    def doc(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg, "data": self.data}


async def nonce_fresh(redis: aioredis.Redis, bank_code: str, nonce: str) -> bool:
    """First use of a nonce within its window? Redis down: trust the timestamp window."""
    try:
        return bool(await redis.set(f"nonce:bank:{bank_code}:{nonce}", 1, nx=True, ex=NONCE_TTL_S))
    except RedisError:
        log.warning("nonce store unavailable; relying on the timestamp window")
        return True


def _code_problem(code: str) -> BankAnswer | None:
    if len(code) != LENGTH or not code.isdigit():
        return BankAnswer(ResultCode.UNKNOWN_CODE, "unknown payment code")
    if not is_valid(code):
        return BankAnswer(ResultCode.CHECK_FAILED, "payment code check failed")
    return None


_REFUSALS = {
    "bill_cancelled": (ResultCode.CANCELLED, "bill cancelled"),
    "bill_expired": (ResultCode.PAST_DEADLINE, "past the payment deadline"),
    "bill_past_deadline": (ResultCode.PAST_DEADLINE, "past the payment deadline"),
}


async def bank_query(
    ctx: PaymentContext, channel: str, payment_code: str, *, now: datetime | None = None
) -> BankAnswer:
    now = now or datetime.now(UTC)
    problem = _code_problem(payment_code)
    if problem is not None:
        return problem
    async with ctx.sessions() as s, s.begin():
        view = await bills.load_view(s, payment_code=payment_code)
        if view is None:
            return BankAnswer(ResultCode.UNKNOWN_CODE, "unknown payment code")
        refused = bills.refusal(view, now)
        if refused is not None:
            code, msg = _REFUSALS.get(refused[0], (ALREADY_PAID, "bill already paid"))
            return BankAnswer(code, msg)
        due = bills.due_on(view, shanghai_today(now))
        attempt = await s.scalar(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.bill_id == view.bill_id,
                PaymentAttempt.channel == channel,
                PaymentAttempt.status == AttemptStatus.PENDING,
                PaymentAttempt.amount == due.total,
                PaymentAttempt.channel_trade_no.is_(None),
                PaymentAttempt.expires_at > now + REUSE_MARGIN,
            )
            .order_by(PaymentAttempt.created_at.desc())
            .limit(1)
        )
        if attempt is None:
            attempt = _new_attempt(ctx, view, channel, due.total, now)
            s.add(attempt)
    return BankAnswer(
        ResultCode.OK,
        "ok",
        {
            "order_id": str(attempt.id),
            "payment_code": view.payment_code,
            "agency_name": view.agency_name,
            "payer_name": bills.mask_name(view.payer_name),
            "amount": fen_to_yuan(due.total),
            "principal": fen_to_yuan(due.principal),
            "late_fee": fen_to_yuan(due.late_fee),
            "due_date": view.due_date.isoformat(),
            "pay_before": format_time(attempt.expires_at),
            "items": [{"name": li.name, "amount": fen_to_yuan(li.amount)} for li in view.lines],
        },
    )


def _new_attempt(
    ctx: PaymentContext,
    view: bills.BillView,
    channel: str,
    amount: int,
    now: datetime,
    *,
    serial: str | None = None,
    mode: str = "bank",
) -> PaymentAttempt:
    # No channel call to make: the bank already has the payer, so the attempt starts PENDING.
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    return PaymentAttempt(
        id=uuid.uuid4(),
        bill_id=view.bill_id,
        channel=channel,
        mode=mode[:16],
        status=AttemptStatus.PENDING,
        amount=amount,
        channel_trade_no=serial,
        expires_at=expires_at,
        next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
    )


async def bank_confirm(  # noqa: PLR0911 - one answer per result code of the interface
    ctx: PaymentContext, channel: str, msg: dict[str, Any], *, now: datetime | None = None
) -> BankAnswer:
    now = now or datetime.now(UTC)
    try:
        code = str(msg["payment_code"])
        serial = str(msg["bank_serial"])
        amount = yuan_to_fen(str(msg["amount"]))
        paid_at = parse_time(str(msg["paid_at"]))
        order = msg.get("order_id")
        order_id = uuid.UUID(str(order)) if order else None
        pay_mode = str(msg.get("pay_mode") or "bank")
    except (KeyError, ValueError):
        return BankAnswer(ResultCode.BAD_REQUEST, "malformed confirmation")
    if not serial or len(serial) > 64 or amount <= 0:
        return BankAnswer(ResultCode.BAD_REQUEST, "malformed confirmation")
    problem = _code_problem(code)
    if problem is not None:
        return problem
    bound = log.bind(channel=channel, bank_serial=serial)

    ids, answer = await _attempt_for(
        ctx,
        channel=channel,
        code=code,
        serial=serial,
        amount=amount,
        paid_at=paid_at,
        order_id=order_id,
        pay_mode=pay_mode,
        now=now,
    )
    if answer is not None:
        bound.info("bank confirmation refused", code=answer.code)
        return answer
    assert ids is not None
    attempt_id, bill_id = ids
    result = await confirm_payment(
        ctx.sessions,
        ctx.redis,
        attempt_id=attempt_id,
        bill_id=bill_id,
        channel_trade_no=serial,
        amount=amount,
        paid_at=paid_at,
        source=f"confirm:{channel}",
        cutoff=ctx.cutoff,
    )
    if result.outcome == ConfirmOutcome.REJECTED_AMOUNT:
        return BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs from the amount due")
    if result.outcome == ConfirmOutcome.REJECTED_STATE:
        return BankAnswer(ResultCode.DUPLICATE_CONFIRMATION, "conflicting confirmation")
    if result.outcome == ConfirmOutcome.UNKNOWN_ATTEMPT:
        return BankAnswer(ResultCode.UNKNOWN_CODE, "unknown order")
    kind, receipt_id = result.receipt_kind, result.receipt_id
    if kind is None:  # answered by the unique indexes: read what was recorded
        async with ctx.sessions() as s:
            row = (
                await s.execute(
                    select(Receipt.id, Receipt.kind).where(Receipt.attempt_id == attempt_id)
                )
            ).first()
        kind, receipt_id = (row.kind, row.id) if row is not None else (None, None)
    disposition = "PAID" if kind == "PAYMENT" else "REFUND"
    return BankAnswer(
        ResultCode.OK,
        "ok",
        {
            "order_id": str(attempt_id),
            "bank_serial": serial,
            "receipt_id": str(receipt_id) if receipt_id is not None else None,
            "disposition": disposition,
        },
    )


async def _attempt_for(
    ctx: PaymentContext,
    *,
    channel: str,
    code: str,
    serial: str,
    amount: int,
    paid_at: datetime,
    order_id: uuid.UUID | None,
    pay_mode: str,
    now: datetime,
) -> tuple[tuple[uuid.UUID, uuid.UUID] | None, BankAnswer | None]:
    """The attempt this confirmation is about: by bank serial, by order id, or a new one."""
    for _ in range(2):  # a second pass after losing an insert race on the serial
        try:
            return await _attempt_once(
                ctx,
                channel=channel,
                code=code,
                serial=serial,
                amount=amount,
                paid_at=paid_at,
                order_id=order_id,
                pay_mode=pay_mode,
                now=now,
            )
        except IntegrityError:
            continue
    return None, BankAnswer(ResultCode.DUPLICATE_CONFIRMATION, "conflicting confirmation")


async def _attempt_once(  # noqa: PLR0911 - one answer per result code of the interface
    ctx: PaymentContext,
    *,
    channel: str,
    code: str,
    serial: str,
    amount: int,
    paid_at: datetime,
    order_id: uuid.UUID | None,
    pay_mode: str,
    now: datetime,
) -> tuple[tuple[uuid.UUID, uuid.UUID] | None, BankAnswer | None]:
    conflict = BankAnswer(ResultCode.DUPLICATE_CONFIRMATION, "conflicting confirmation")
    async with ctx.sessions() as s, s.begin():
        known = (
            await s.execute(
                select(PaymentAttempt, Bill.payment_code)
                .join(Bill, Bill.id == PaymentAttempt.bill_id)
                .where(
                    PaymentAttempt.channel == channel,
                    PaymentAttempt.channel_trade_no == serial,
                )
            )
        ).first()
        if known is not None:
            attempt, known_code = known
            if known_code != code or attempt.amount != amount:
                return None, conflict
            return (attempt.id, attempt.bill_id), None  # a repeat: confirm_payment answers it
        if order_id is not None:
            row = (
                await s.execute(
                    select(PaymentAttempt, Bill.payment_code)
                    .join(Bill, Bill.id == PaymentAttempt.bill_id)
                    .where(PaymentAttempt.id == order_id)
                )
            ).first()
            if row is None or row[0].channel != channel or row[1] != code:
                return None, BankAnswer(ResultCode.UNKNOWN_CODE, "unknown order")
            if row[0].amount != amount:
                return None, BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs")
            if row[0].channel_trade_no not in (None, serial):
                return None, conflict
            return (row[0].id, row[0].bill_id), None
        # 12005 accepted (see the module doc): open an attempt keyed by the serial.
        view = await bills.load_view(s, payment_code=code)
        if view is None:
            return None, BankAnswer(ResultCode.UNKNOWN_CODE, "unknown payment code")
        due = bills.due_on(view, shanghai_today(paid_at)).total
        if view.status == BillStatus.ISSUED and amount != due:
            return None, BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs")
        attempt = _new_attempt(ctx, view, channel, amount, now, serial=serial, mode=pay_mode)
        s.add(attempt)
        await s.flush()  # the unique (channel, serial) index decides a race
        return (attempt.id, attempt.bill_id), None
