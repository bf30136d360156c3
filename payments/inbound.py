"""Channels that call us (banks today; kiosks and card terminals next), channel-agnostic.

`receive` is the whole conversation: the channel's adapter parses and verifies the message
into a typed request (channels.base), a nonce is accepted once, the request is answered
here in our own terms (an Outcome, the bill due, what became of the money), and the adapter
renders the answer in its own codes and signs it. No wire field, yuan string or result code
is seen here.

Decisions (the national practice does not settle them):
- A query opens (or reuses) a PENDING attempt on the channel for today's amount due and
  answers its id as the order id. The channel echoes it in the confirmation; if that is
  lost, the recovery job queries the channel by that order id and confirms from its answer.
- A confirmation without a prior query is ACCEPTED: the amount check still applies, so the
  query is an aid, not a guard. Such a confirmation opens an attempt keyed by the channel's
  reference.
- Idempotency is by the channel's reference: an identical repeat answers OK; the same
  reference with another payment code or amount answers DUPLICATE.
- An order id already confirmed under another reference (the device charged twice for one
  order) is a second payment, not a conflict: it is recorded by its own reference like a
  confirmation without an order — a DUPLICATE receipt and an automatic refund when the
  bill is paid — and its repeats answer the same.
- A confirmation is money already taken from the payer. Refused outright (nothing recorded,
  the channel reverses its debit) only when the message is wrong: unknown code, check digit,
  amount not the amount due, conflicting repeat. A bill that can no longer take the money
  (paid, cancelled, expired, past a hard deadline) gets a DUPLICATE receipt and an automatic
  refund, answered OK with disposition REFUND.
- A reversal (冲正) undoes a confirmation on the business day it was recorded, as if it
  never happened (payments.channel_reversal); later, money goes back as a refund.
- A forged, stale or replayed message is answered FORGED and changes nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from billing import payer as bills
from billing.models import Bill
from billing.payment_code import LENGTH, is_valid
from billing.states import BillStatus
from channels.base import (
    BadMessage,
    BadParameter,
    BatchSettlement,
    BillDue,
    BillQuery,
    CardInquiry,
    CardRefund,
    CardReversal,
    CardSale,
    CardVoid,
    ConfirmationReceipt,
    ConfirmPayment,
    DayEndCheck,
    Disposition,
    DueLine,
    InboundAnswer,
    InboundCall,
    InboundChannel,
    InboundRequest,
    InvalidNotification,
    Outcome,
    PayMode,
    ReverseConfirmation,
    UnknownSender,
    UnsupportedVersion,
    UploadConfirmations,
    WireReply,
)
from kernel import nonces
from kernel.clock import business_date, shanghai_today
from kernel.db import database_unavailable
from kernel.kv import KV
from payments import attempts, daycheck
from payments.channel_reversal import Reversal, reverse_confirmation
from payments.confirm import (
    BILL_COLUMNS,
    AttemptFacts,
    ConfirmOutcome,
    ConfirmResult,
    DriverStatement,
    Opening,
    Paying,
    after_commit,
    apply_confirmation,
    apply_to_locked,
    bill_facts,
    confirm_payment,
    core_transaction,
    open_and_confirm,
)
from payments.context import PaymentContext, Sent
from payments.models import PaymentAttempt
from payments.pos import service as pos
from payments.states import AttemptStatus

__all__ = [
    "MAX_UPLOAD",
    "Sent",
    "check_day",
    "confirm",
    "handle",
    "nonce_fresh",
    "query_bill",
    "receive",
    "register_handler",
    "reverse",
    "upload",
]

log = structlog.get_logger(__name__)

REUSE_MARGIN = timedelta(minutes=5)
NONCE_TTL_S = 900
MAX_UPLOAD = 500
"""Confirmations in one upload; a device with more sends several batches."""


# ------------------------------------------------------------------ the conversation


async def receive(  # noqa: PLR0911 - one answer per kind of unusable message
    ctx: PaymentContext, inbound: InboundChannel, call: InboundCall
) -> WireReply:
    """Parse and verify, accept the nonce once, answer, render: one inbound message."""
    bound = log.bind(channel=inbound.name, op=call.operation)
    try:
        message = await inbound.parse(call)
    except UnknownSender as exc:
        bound.warning("inbound message from an unknown sender", reason=exc.code)
        return await inbound.render(
            call, None, InboundAnswer(Outcome.UNKNOWN_SENDER, "unknown sender")
        )
    except InvalidNotification as exc:
        bound.warning("inbound message unverifiable", reason=exc.code)
        return await inbound.render(call, None, _FORGED)
    except UnsupportedVersion as exc:
        bound.info("inbound message of an unsupported version", reason=exc.code)
        return await inbound.render(
            call, None, InboundAnswer(Outcome.UNSUPPORTED_VERSION, str(exc))
        )
    except BadParameter as exc:
        bound.info("inbound message with a bad parameter", reason=exc.code)
        return await inbound.render(call, None, InboundAnswer(Outcome.BAD_PARAMETER, str(exc)))
    except BadMessage as exc:
        bound.info("inbound message malformed", reason=exc.code)
        return await inbound.render(call, None, InboundAnswer(Outcome.BAD_REQUEST, str(exc)))
    if _has_nul(message.request):
        # PostgreSQL text cannot hold a NUL (it failed there, as a 500): malformed, in the
        # channel's own code, before anything is looked up or written.
        bound.info("inbound message malformed", reason="nul_character")
        return await inbound.render(
            call, message, InboundAnswer(Outcome.BAD_REQUEST, "NUL character in a field")
        )
    try:
        if message.nonce is not None and not await nonce_fresh(
            ctx.redis, ctx.sessions, message.channel, message.nonce
        ):
            bound.warning("inbound message replayed")
            return await inbound.render(call, None, _FORGED)
        answer = await handle(ctx, message.channel, message.request, sender=message.sender)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        # PostgreSQL out of reach: the channel's own signed "try later", not an unsigned
        # 5xx it cannot tell from a forgery. Sending the same message again is safe: a
        # confirmation that did commit is recognised by its reference and answered OK.
        bound.warning("inbound message deferred: database unavailable")
        answer = _TRY_LATER
    return await inbound.render(call, message, answer)


async def nonce_fresh(
    redis: KV, sessions: async_sessionmaker[AsyncSession], channel: str, nonce: str
) -> bool:
    """First use of a nonce within its window, per channel (the one nonce store,
    kernel.nonces: Redis, PostgreSQL while Redis is down)."""
    return await nonces.first_use(redis, sessions, channel, nonce, NONCE_TTL_S)


def _has_nul(value: object) -> bool:
    """Does any text in a typed request (its fields, nested values) contain a NUL?"""
    if isinstance(value, str):
        return "\x00" in value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_has_nul(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


_FORGED = InboundAnswer(Outcome.FORGED, "signature check failed")
_TRY_LATER = InboundAnswer(
    Outcome.TRY_LATER, "temporarily unavailable; send the same message again"
)


async def handle(
    ctx: PaymentContext,
    channel: str,
    request: InboundRequest,
    *,
    sender: str | None = None,
    now: datetime | None = None,
) -> InboundAnswer:
    """Answer one typed, verified request from `channel` (`sender` within it)."""
    handler = _HANDLERS.get(type(request))
    if handler is None:
        return InboundAnswer(Outcome.BAD_REQUEST, "operation not supported")
    return await handler(ctx, Sent(channel, sender), request, now or datetime.now(UTC))


# ------------------------------------------------------------------ query


def _code_problem(code: str) -> InboundAnswer | None:
    if len(code) != LENGTH or not code.isdigit():
        return InboundAnswer(Outcome.UNKNOWN_CODE, "unknown payment code")
    if not is_valid(code):
        return InboundAnswer(Outcome.CHECK_FAILED, "payment code check failed")
    return None


_REFUSALS = {
    "bill_cancelled": InboundAnswer(Outcome.CANCELLED, "bill cancelled"),
    "bill_expired": InboundAnswer(Outcome.EXPIRED, "past the payment deadline"),
    "bill_past_deadline": InboundAnswer(Outcome.EXPIRED, "past the payment deadline"),
}
_ALREADY_PAID = InboundAnswer(Outcome.ALREADY_PAID, "bill already paid")


async def query_bill(
    ctx: PaymentContext, sent: Sent, request: BillQuery, now: datetime
) -> InboundAnswer:
    channel = sent.channel
    problem = _code_problem(request.payment_code)
    if problem is not None:
        return problem
    async with ctx.sessions() as s, s.begin():
        view = await bills.load_view(s, payment_code=request.payment_code)
        if view is None:
            return InboundAnswer(Outcome.UNKNOWN_CODE, "unknown payment code")
        refused = bills.refusal(view, now)
        if refused is not None:
            return _REFUSALS.get(refused[0], _ALREADY_PAID)
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
    return InboundAnswer(
        Outcome.OK,
        bill=BillDue(
            payment_code=view.payment_code,
            order_id=str(attempt.id),
            agency_name=view.agency_name,
            payer_name=bills.mask_name(view.payer_name),
            amount=due.total,
            principal=due.principal,
            late_fee=due.late_fee,
            due_date=view.due_date,
            pay_before=attempt.expires_at,
            lines=tuple(DueLine(li.name, li.amount) for li in view.lines),
        ),
    )


def _new_attempt(
    ctx: PaymentContext, view: bills.BillView, channel: str, amount: int, now: datetime
) -> PaymentAttempt:
    # No channel call to make: the channel already has the payer, so it starts PENDING.
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    return PaymentAttempt(
        id=uuid.uuid4(),
        bill_id=view.bill_id,
        channel=channel,
        mode=PayMode.for_channel(channel).value,  # the payer has not said how yet
        status=AttemptStatus.PENDING,
        amount=amount,
        expires_at=expires_at,
        next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
    )


# ------------------------------------------------------------------ confirm

_CONFLICT = InboundAnswer(Outcome.DUPLICATE, "conflicting confirmation")
_SECOND_CHARGE = InboundAnswer(Outcome.OK, "second charge under a confirmed order")
"""Internal, never sent: the order is confirmed under another reference (see _confirm)."""
_UNKNOWN_ORDER = InboundAnswer(Outcome.UNKNOWN_ORDER, "unknown order")
_AMOUNT_DIFFERS = InboundAnswer(Outcome.AMOUNT_DIFFERS, "amount differs from the amount due")


async def confirm(
    ctx: PaymentContext, sent: Sent, request: ConfirmPayment, now: datetime
) -> InboundAnswer:
    """Record the money the channel took, exactly once (see the module doc).

    A confirmation of one of our orders refused for its amount ends that order's attempt
    (FAILED): the channel reverses its debit, and the attempt is not left open forever."""
    answer = await _confirm(ctx, sent, request, now)
    if answer.outcome == Outcome.AMOUNT_DIFFERS and request.order_id:
        try:
            order_id = uuid.UUID(request.order_id)
        except ValueError:
            return answer
        await attempts.fail_for_amount(ctx, order_id, sent.channel)
    return answer


async def _confirm(  # noqa: PLR0911 - one answer per outcome of a confirmation
    ctx: PaymentContext, sent: Sent, request: ConfirmPayment, now: datetime
) -> InboundAnswer:
    channel = sent.channel
    problem = _code_problem(request.payment_code)
    if problem is not None:
        return problem
    try:
        order_id = uuid.UUID(request.order_id) if request.order_id else None
    except ValueError:
        return _UNKNOWN_ORDER
    bound = log.bind(channel=channel, reference=request.reference)
    if order_id is not None:
        answered = await _confirm_order(ctx, channel, request, order_id)
        if answered is _SECOND_CHARGE:
            # The order was paid under another reference: this is a second charge, recorded
            # as a payment of the bill by its own reference (a duplicate, refunded).
            bound.warning("second charge under a confirmed order", order_id=str(order_id))
            order_id = None
        elif answered is not None:
            return answered
    if order_id is None:
        made = await _open_and_confirm(ctx, channel, request, now)
        if made is not None:
            return _answer(made, request)
    for _ in range(2):  # a second pass after losing a race on a unique index
        try:
            async with core_transaction(ctx.sessions) as conn:
                result, refused, payment_code = await _confirm_in(
                    conn, ctx, channel=channel, request=request, order_id=order_id, now=now
                )
            break
        except IntegrityError:
            # Rolled back whole. The winner has committed: the next pass finds its attempt
            # by the reference and answers the repeat.
            continue
    else:
        bound.warning("confirmation conflicts with a recorded one")
        return _CONFLICT
    if refused is not None:
        bound.info("confirmation refused", outcome=refused.outcome)
        return refused
    assert result is not None
    await after_commit(ctx.redis, result, payment_code, f"confirm:{channel}")
    return _answer(result, request)


def _answer(result: ConfirmResult, request: ConfirmPayment) -> InboundAnswer:
    if result.outcome == ConfirmOutcome.REJECTED_AMOUNT:
        return _AMOUNT_DIFFERS
    if result.outcome == ConfirmOutcome.REJECTED_STATE:
        return _CONFLICT
    if result.outcome == ConfirmOutcome.UNKNOWN_ATTEMPT:
        return _UNKNOWN_ORDER
    paid = result.receipt_kind == "PAYMENT"
    return InboundAnswer(
        Outcome.OK,
        receipt=ConfirmationReceipt(
            order_id=str(result.attempt_id),
            reference=request.reference,
            receipt_id=str(result.receipt_id) if result.receipt_id is not None else None,
            disposition=Disposition.PAID if paid else Disposition.REFUND,
            sequence=request.sequence,
        ),
    )


_A = cast(Table, PaymentAttempt.__table__)
_B = cast(Table, Bill.__table__)
# Built once: a confirmation neither builds nor compiles SQL.
_BY_REFERENCE = (
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
# The order a confirmation names and whether its reference is known already, in one read.
_ORDER_AND_REFERENCE = select(
    _BY_ORDER.subquery("o"),
    select(_K.c.id)
    .where(_K.c.channel == bindparam("p_channel"), _K.c.channel_trade_no == bindparam("p_serial"))
    .scalar_subquery()
    .label("known_id"),
)
_ORDER_AND_REFERENCE_DRIVER = DriverStatement.of(
    "SELECT a.bill_id, a.channel, a.amount, a.channel_trade_no, b.payment_code,"
    " (SELECT k.id FROM payment_attempts AS k WHERE k.channel = :p_channel"
    " AND k.channel_trade_no = :p_serial) AS known_id"
    " FROM payment_attempts AS a JOIN bills AS b ON b.id = a.bill_id WHERE a.id = :p_order_id"
)
"""_ORDER_AND_REFERENCE as text, for the driver connection."""


class _Record:
    """Attribute access to a driver record."""

    def __init__(self, record: Any) -> None:
        self._r = record

    def __getattr__(self, name: str) -> Any:
        return self._r[name]


# The usual message (no prior query): ONE locking read answers "which bill, what is due"
# and "is this reference known already (and for which payment code)".
_BILL_AND_REFERENCE = (
    select(
        *BILL_COLUMNS,
        _B.c.due_date,
        _B.c.late_fee_rule,  # fixed on the bill when it was issued
        _K.c.id.label("known_id"),
        _K.c.bill_id.label("known_bill_id"),
        _K.c.amount.label("known_amount"),
        _KB.c.payment_code.label("known_code"),
    )
    .select_from(
        _B.outerjoin(
            _K,
            (_K.c.channel == bindparam("p_channel"))
            & (_K.c.channel_trade_no == bindparam("p_serial")),
        ).outerjoin(_KB, _KB.c.id == _K.c.bill_id)
    )
    .where(_B.c.payment_code == bindparam("p_code"))
    .with_for_update(of=_B)
)


async def _open_and_confirm(
    ctx: PaymentContext, channel: str, request: ConfirmPayment, now: datetime
) -> ConfirmResult | None:
    """The usual message (no prior query): one grouped statement opens the attempt and
    pays the bill; None when its guards did not hold (the general path decides)."""
    pay_mode = request.pay_mode or PayMode.for_channel(channel)
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    paying = Paying(
        attempt_id=uuid.uuid4(),
        bill_id=None,
        channel=channel,
        channel_trade_no=request.reference,
        amount=request.amount,
        paid_at=request.paid_at,
        business_date=business_date(request.paid_at, ctx.cutoff),
        source=f"confirm:{channel}",
        pay_mode=pay_mode,
        opening=Opening(
            payment_code=request.payment_code,
            mode=pay_mode.value,
            expires_at=expires_at,
            next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
            paid_day=shanghai_today(request.paid_at),
        ),
    )
    return await open_and_confirm(ctx.sessions, ctx.redis, paying)


async def _confirm_order(
    ctx: PaymentContext, channel: str, request: ConfirmPayment, order_id: uuid.UUID
) -> InboundAnswer | None:
    """A confirmation of an order we issued: checked by one read, then confirmed by
    confirm_payment (the grouped one-statement path when its guards hold). None: the
    reference is known already; the general path answers the repeat. _SECOND_CHARGE: the
    order is confirmed under another reference (the same read tells)."""
    params = {"p_order_id": order_id, "p_channel": channel, "p_serial": request.reference}
    engine = ctx.sessions.kw.get("bind")
    if isinstance(engine, AsyncEngine):
        # One read on the driver connection: no BEGIN/ROLLBACK around it, no session.
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            found = await _ORDER_AND_REFERENCE_DRIVER.fetch(driver, params)
        row: Any = _Record(found[0]) if found else None
    else:
        async with ctx.sessions() as s:
            row = (await s.execute(_ORDER_AND_REFERENCE, params)).first()
    if row is None or row.channel != channel or row.payment_code != request.payment_code:
        return _UNKNOWN_ORDER
    if row.known_id is not None:
        return None
    if row.amount != request.amount:
        return _AMOUNT_DIFFERS
    if row.channel_trade_no not in (None, request.reference):
        return _SECOND_CHARGE
    result = await confirm_payment(
        ctx.sessions,
        ctx.redis,
        attempt_id=order_id,
        bill_id=row.bill_id,
        channel=channel,
        channel_trade_no=request.reference,
        amount=request.amount,
        paid_at=request.paid_at,
        source=f"confirm:{channel}",
        cutoff=ctx.cutoff,
        pay_mode=request.pay_mode,
    )
    if result.outcome == ConfirmOutcome.ALREADY_CONFIRMED and result.receipt_id is None:
        # A unique index caught it: the reference was recorded meanwhile, perhaps on
        # another order. The general path tells a repeat from a conflict.
        return None
    return _answer(result, request)


@dataclass(frozen=True, slots=True)
class _Known:
    """The attempt a channel reference already names."""

    id: uuid.UUID
    bill_id: uuid.UUID
    amount: int
    payment_code: str


async def _confirm_in(  # noqa: PLR0911 - one answer per outcome of a confirmation
    conn: AsyncConnection,
    ctx: PaymentContext,
    *,
    channel: str,
    request: ConfirmPayment,
    order_id: uuid.UUID | None,
    now: datetime,
) -> tuple[ConfirmResult | None, InboundAnswer | None, str]:
    """Find the attempt (by reference, by order id, or open one) and confirm it, all in
    the caller's transaction: (result, refusal, payment code)."""
    code, serial, amount = request.payment_code, request.reference, request.amount
    pay_mode = request.pay_mode or PayMode.for_channel(channel)
    confirm_args: dict[str, Any] = {
        "channel_trade_no": serial,
        "amount": amount,
        "paid_at": request.paid_at,
        "source": f"confirm:{channel}",
        "cutoff": ctx.cutoff,
        "pay_mode": pay_mode,
    }
    rows: Sequence[Any] = ()  # the bill (one row, or none for an unknown code)
    known: _Known | None = None
    if order_id is None:
        rows = (
            await conn.execute(
                _BILL_AND_REFERENCE, {"p_code": code, "p_channel": channel, "p_serial": serial}
            )
        ).all()
        if rows and rows[0].known_id is not None:
            r = rows[0]
            known = _Known(r.known_id, r.known_bill_id, r.known_amount, r.known_code)
    else:
        k = (await conn.execute(_BY_REFERENCE, {"p_channel": channel, "p_serial": serial})).first()
        known = _Known(k.id, k.bill_id, k.amount, k.payment_code) if k is not None else None
    if known is not None:
        if known.payment_code != code or known.amount != amount:
            return None, _CONFLICT, code
        # A repeat: the confirmation answers it (ALREADY_CONFIRMED with its receipt).
        result, pc = await apply_confirmation(
            conn, attempt_id=known.id, bill_id=known.bill_id, **confirm_args
        )
        return result, None, pc
    if order_id is not None:
        row = (await conn.execute(_BY_ORDER, {"p_order_id": order_id})).first()
        if row is None or row.channel != channel or row.payment_code != code:
            return None, _UNKNOWN_ORDER, code
        if row.amount != amount:
            return None, _AMOUNT_DIFFERS, code
        if row.channel_trade_no in (None, serial):
            result, pc = await apply_confirmation(
                conn, attempt_id=order_id, bill_id=row.bill_id, **confirm_args
            )
            return result, None, pc
        # A second charge under an order confirmed under another reference: a payment of
        # the bill by its own reference, as below (its reference is not known: see above).
        rows = (
            await conn.execute(
                _BILL_AND_REFERENCE, {"p_code": code, "p_channel": channel, "p_serial": serial}
            )
        ).all()
    # No prior query (accepted, see the module doc): lock the bill, open an attempt keyed
    # by the reference and confirm it — the attempt row is inserted by the confirmation's
    # write.
    if not rows:  # an unknown payment code (a known reference of another code: this too)
        return None, InboundAnswer(Outcome.UNKNOWN_CODE, "unknown payment code"), code
    bill = bill_facts(rows[0])
    due = bills.due_on(rows[0], shanghai_today(request.paid_at), ctx.day_count)
    if bill.status == BillStatus.ISSUED and amount != due.total:
        return None, _AMOUNT_DIFFERS, code
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
        status=AttemptStatus.PENDING,  # what an inbound channel's attempt starts as
        amount=amount,
        channel_trade_no=serial,
        new=new,
    )
    result, pc = await apply_to_locked(conn, bill, attempt, **confirm_args)
    return result, None, pc


# ------------------------------------------------------------------ reversal (冲正)

_REVERSAL_ANSWERS = {
    Reversal.REVERSED: InboundAnswer(Outcome.OK, "reversed"),
    Reversal.NOT_CONFIRMED: InboundAnswer(Outcome.NOT_CONFIRMED, "no such confirmation"),
    Reversal.AMOUNT_DIFFERS: InboundAnswer(
        Outcome.AMOUNT_DIFFERS, "amount differs from the confirmation's"
    ),
    Reversal.TOO_LATE: InboundAnswer(Outcome.TOO_LATE, "past taking back: a refund is needed"),
}


async def reverse(
    ctx: PaymentContext, sent: Sent, request: ReverseConfirmation, now: datetime
) -> InboundAnswer:
    """Undo a confirmation the channel sent, by its reference, by the rules of
    payments.channel_reversal (the same business day; as if it never happened)."""
    problem = _code_problem(request.payment_code)
    if problem is not None:
        return problem
    result = await reverse_confirmation(
        ctx.sessions,
        ctx.redis,
        channel=sent.channel,
        payment_code=request.payment_code,
        reference=request.reference,
        amount=request.amount,
        reason=request.reason,
        now=now,
        cutoff=ctx.cutoff,
    )
    return _REVERSAL_ANSWERS[result.outcome]


# ------------------------------------------------------------------ upload (store and forward)


async def upload(
    ctx: PaymentContext, sent: Sent, request: UploadConfirmations, now: datetime
) -> InboundAnswer:
    """Each stored confirmation by the same rules as a live one, in the order sent: one
    sent twice (in this batch or an earlier one) is a repeat and answered as such."""
    if not request.items or len(request.items) > MAX_UPLOAD:
        return InboundAnswer(Outcome.BAD_REQUEST, f"an upload holds 1 to {MAX_UPLOAD} items")
    answers = [await confirm(ctx, sent, item, now) for item in request.items]
    return InboundAnswer(Outcome.OK, items=tuple(answers))


# ------------------------------------------------------------------ day-end check (日终对账)


async def check_day(
    ctx: PaymentContext, sent: Sent, request: DayEndCheck, now: datetime
) -> InboundAnswer:
    """The channel's day-end list against its intraday confirmations (payments.daycheck)."""
    del now
    try:
        result = await daycheck.check_day(
            ctx.sessions,
            channel=sent.channel,
            day=request.business_date,
            lines=request.lines,
            raw=request.raw,
        )
    except daycheck.DuplicateLine as exc:
        return InboundAnswer(Outcome.BAD_PARAMETER, str(exc))
    if result.sent_twice:
        return InboundAnswer(Outcome.SENT_TWICE, "day-end check sent twice")
    if result.mismatches:
        return InboundAnswer(
            Outcome.CHECK_DIFFERS, "day-end check differs", findings=result.mismatches
        )
    return InboundAnswer(Outcome.OK)


_Handler = Callable[[PaymentContext, Sent, Any, datetime], Awaitable[InboundAnswer]]
_HANDLERS: dict[type[InboundRequest], _Handler] = {
    BillQuery: query_bill,
    ConfirmPayment: confirm,
    ReverseConfirmation: reverse,
    UploadConfirmations: upload,
    DayEndCheck: check_day,
    # Card terminals (MIS-POS): keyed by batch and trace number (payments.pos.service).
    CardInquiry: pos.handler(pos.inquiry),
    CardSale: pos.handler(pos.sale),
    CardReversal: pos.handler(pos.reversal),
    CardVoid: pos.handler(pos.void),
    CardRefund: pos.handler(pos.refund),
    BatchSettlement: pos.handler(pos.settle),
}
"""One handler per typed request; a new operation adds its request type and a line here,
or — for a room above this one (the kiosk's heartbeat and reprint) — registers it."""


def register_handler(request_type: type[InboundRequest], handler: _Handler) -> None:
    """Answer `request_type` with `handler` from now on: how a room above payments (which
    this module may not import) answers a channel's own requests. Called once at start-up;
    the same pair again is a no-op, another handler for a registered type an error."""
    known = _HANDLERS.get(request_type)
    if known is not None and known is not handler:
        raise ValueError(f"{request_type.__name__} is answered already")
    _HANDLERS[request_type] = handler
