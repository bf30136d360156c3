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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from billing import payer as bills
from billing.models import Bill, BillLine
from billing.payment_code import LENGTH, is_valid
from billing.states import BillStatus
from channels.bank.transforms import ResultCode, format_time, parse_time
from channels.bank.transforms import pay_mode as wire_pay_mode
from channels.base import PayMode
from channels.money import fen_to_yuan, yuan_to_fen
from kernel import nonces
from kernel.clock import business_date, shanghai_today
from kernel.kv import KV
from payments.confirm import (
    BILL_COLUMNS,
    AttemptFacts,
    ConfirmOutcome,
    ConfirmResult,
    Opening,
    Paying,
    after_commit,
    apply_confirmation,
    apply_to_locked,
    bill_facts,
    core_transaction,
    open_and_confirm,
)
from payments.context import PaymentContext
from payments.models import PaymentAttempt
from payments.states import AttemptStatus

__all__ = [
    "BankAnswer",
    "bank_confirm",
    "bank_query",
    "nonce_fresh",
]

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


async def nonce_fresh(
    redis: KV, sessions: async_sessionmaker[AsyncSession], bank_code: str, nonce: str
) -> bool:
    """First use of a nonce within its window (the one nonce store, kernel.nonces: Redis,
    PostgreSQL while Redis is down)."""
    return await nonces.first_use(redis, sessions, f"bank:{bank_code}", nonce, NONCE_TTL_S)


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
        due = bills.due_on(view, shanghai_today(now), ctx.day_count)
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


async def bank_confirm(  # noqa: PLR0911, PLR0912 - one answer per result code of the interface
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
    except (KeyError, ValueError):
        return BankAnswer(ResultCode.BAD_REQUEST, "malformed confirmation")
    try:
        pay_mode = wire_pay_mode(msg.get("pay_mode"))
    except ValueError:
        return BankAnswer(ResultCode.PARAMETER_ERROR, "unknown pay_mode")
    if not serial or len(serial) > 64 or amount <= 0:
        return BankAnswer(ResultCode.BAD_REQUEST, "malformed confirmation")
    problem = _code_problem(code)
    if problem is not None:
        return problem
    bound = log.bind(channel=channel, bank_serial=serial)
    if order_id is None:
        made = await _grouped(ctx, channel, code, serial, amount, paid_at, pay_mode, now)
        if made is not None:
            return _confirmed(made, serial)
    conflict = BankAnswer(ResultCode.DUPLICATE_CONFIRMATION, "conflicting confirmation")
    for _ in range(2):  # a second pass after losing a race on a unique index
        try:
            async with core_transaction(ctx.sessions) as conn:
                result, answer, payment_code = await _confirm_in(
                    conn,
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
            break
        except IntegrityError:
            # Rolled back whole. The winner has committed: the next pass finds its attempt
            # by the serial and answers the repeat.
            continue
    else:
        bound.warning("bank confirmation conflicts with a recorded one")
        return conflict
    if answer is not None:
        bound.info("bank confirmation refused", code=answer.code)
        return answer
    assert result is not None
    await after_commit(ctx.redis, result, payment_code, f"confirm:{channel}")
    if result.outcome == ConfirmOutcome.REJECTED_AMOUNT:
        return BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs from the amount due")
    if result.outcome == ConfirmOutcome.REJECTED_STATE:
        return conflict
    if result.outcome == ConfirmOutcome.UNKNOWN_ATTEMPT:
        return BankAnswer(ResultCode.UNKNOWN_CODE, "unknown order")
    return _confirmed(result, serial)


async def _grouped(  # noqa: PLR0917 - the confirmation's facts
    ctx: PaymentContext,
    channel: str,
    code: str,
    serial: str,
    amount: int,
    paid_at: datetime,
    pay_mode: PayMode,
    now: datetime,
) -> ConfirmResult | None:
    """The usual message (no prior query): one grouped statement opens the attempt and
    pays the bill; None when its guards did not hold (the general path decides)."""
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    paying = Paying(
        attempt_id=uuid.uuid4(),
        bill_id=None,
        channel=channel,
        channel_trade_no=serial,
        amount=amount,
        paid_at=paid_at,
        business_date=business_date(paid_at, ctx.cutoff),
        source=f"confirm:{channel}",
        pay_mode=pay_mode,
        opening=Opening(
            payment_code=code,
            mode=pay_mode.value,
            expires_at=expires_at,
            next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
            paid_day=shanghai_today(paid_at),
        ),
    )
    return await open_and_confirm(ctx.sessions, ctx.redis, paying)


def _confirmed(result: ConfirmResult, serial: str) -> BankAnswer:
    disposition = "PAID" if result.receipt_kind == "PAYMENT" else "REFUND"
    return BankAnswer(
        ResultCode.OK,
        "ok",
        {
            "order_id": str(result.attempt_id),
            "bank_serial": serial,
            "receipt_id": str(result.receipt_id) if result.receipt_id is not None else None,
            "disposition": disposition,
        },
    )


_A = cast(Table, PaymentAttempt.__table__)
_B = cast(Table, Bill.__table__)
_L = cast(Table, BillLine.__table__)
# Built once: a confirmation neither builds nor compiles SQL.
_BY_SERIAL = (
    select(_A.c.id, _A.c.bill_id, _A.c.amount, _B.c.payment_code)
    .select_from(_A.join(_B, _B.c.id == _A.c.bill_id))
    .where(_A.c.channel == bindparam("p_channel"), _A.c.channel_trade_no == bindparam("p_serial"))
)
_BY_ORDER = (
    select(_A.c.bill_id, _A.c.channel, _A.c.amount, _A.c.channel_trade_no, _B.c.payment_code)
    .select_from(_A.join(_B, _B.c.id == _A.c.bill_id))
    .where(_A.c.id == bindparam("p_order_id"))
)
_K = _A.alias("k")
_KB = _B.alias("kb")
# The usual bank message (no prior query): ONE locking read answers "which bill, what is
# due" and "is this serial known already (and for which payment code)".
_BILL_AND_SERIAL = (
    select(
        *BILL_COLUMNS,
        _B.c.due_date,
        _L.c.amount.label("line_amount"),
        _B.c.late_fee_rule,  # fixed on the bill when it was issued
        _K.c.id.label("known_id"),
        _K.c.bill_id.label("known_bill_id"),
        _K.c.amount.label("known_amount"),
        _KB.c.payment_code.label("known_code"),
    )
    .select_from(
        _B.outerjoin(_L, _L.c.bill_id == _B.c.id)
        .outerjoin(
            _K,
            (_K.c.channel == bindparam("p_channel"))
            & (_K.c.channel_trade_no == bindparam("p_serial")),
        )
        .outerjoin(_KB, _KB.c.id == _K.c.bill_id)
    )
    .where(_B.c.payment_code == bindparam("p_code"))
    .with_for_update(of=_B)
)


@dataclass(frozen=True, slots=True)
class _Known:
    """The attempt a bank serial already names."""

    id: uuid.UUID
    bill_id: uuid.UUID
    amount: int
    payment_code: str


async def _confirm_in(  # noqa: PLR0911 - one answer per result code of the interface
    conn: AsyncConnection,
    ctx: PaymentContext,
    *,
    channel: str,
    code: str,
    serial: str,
    amount: int,
    paid_at: datetime,
    order_id: uuid.UUID | None,
    pay_mode: PayMode,
    now: datetime,
) -> tuple[ConfirmResult | None, BankAnswer | None, str]:
    """Find the attempt (by bank serial, by order id, or open one) and confirm it, all in
    the caller's transaction: (result, refusal, payment code)."""
    conflict = BankAnswer(ResultCode.DUPLICATE_CONFIRMATION, "conflicting confirmation")
    confirm: dict[str, Any] = {
        "channel_trade_no": serial,
        "amount": amount,
        "paid_at": paid_at,
        "source": f"confirm:{channel}",
        "cutoff": ctx.cutoff,
        "pay_mode": pay_mode,
    }
    rows: Sequence[Any] = ()
    known: _Known | None = None
    if order_id is None:
        rows = (
            await conn.execute(
                _BILL_AND_SERIAL, {"p_code": code, "p_channel": channel, "p_serial": serial}
            )
        ).all()
        if rows and rows[0].known_id is not None:
            r = rows[0]
            known = _Known(r.known_id, r.known_bill_id, r.known_amount, r.known_code)
    else:
        k = (await conn.execute(_BY_SERIAL, {"p_channel": channel, "p_serial": serial})).first()
        known = _Known(k.id, k.bill_id, k.amount, k.payment_code) if k is not None else None
    if known is not None:
        if known.payment_code != code or known.amount != amount:
            return None, conflict, code
        # A repeat: the confirmation answers it (ALREADY_CONFIRMED with its receipt).
        result, pc = await apply_confirmation(
            conn, attempt_id=known.id, bill_id=known.bill_id, **confirm
        )
        return result, None, pc
    if order_id is not None:
        row = (await conn.execute(_BY_ORDER, {"p_order_id": order_id})).first()
        if row is None or row.channel != channel or row.payment_code != code:
            return None, BankAnswer(ResultCode.UNKNOWN_CODE, "unknown order"), code
        if row.amount != amount:
            return None, BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs"), code
        if row.channel_trade_no not in (None, serial):
            return None, conflict, code
        result, pc = await apply_confirmation(
            conn, attempt_id=order_id, bill_id=row.bill_id, **confirm
        )
        return result, None, pc
    # 12005 accepted (see the module doc): lock the bill, open an attempt keyed by the
    # serial and confirm it — the attempt row is inserted by the confirmation's write.
    if not rows:  # an unknown payment code (a known serial of another code: 11001 too)
        return None, BankAnswer(ResultCode.UNKNOWN_CODE, "unknown payment code"), code
    bill = bill_facts(rows[0])
    due = bills.due_on(rows[0], shanghai_today(paid_at), ctx.day_count)
    if bill.status == BillStatus.ISSUED and amount != due.total:
        return None, BankAnswer(ResultCode.AMOUNT_DIFFERS, "amount differs"), code
    attempt_id = uuid.uuid4()
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    new = {
        "id": attempt_id,
        "bill_id": bill.id,
        "channel": channel,
        "mode": pay_mode.value[:16],
        "amount": amount,
        "expires_at": expires_at,
        "next_check_at": min(now + timedelta(seconds=ctx.first_check_s), expires_at),
    }
    attempt = AttemptFacts(
        id=attempt_id,
        bill_id=bill.id,
        channel=channel,
        status=AttemptStatus.PENDING,  # what a bank attempt starts as (see _new_attempt)
        amount=amount,
        channel_trade_no=serial,
        new=new,
    )
    result, pc = await apply_to_locked(conn, bill, attempt, **confirm)
    return result, None, pc
