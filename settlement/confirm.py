"""Confirming a payment exactly once.

`confirm_payment` is the one place a channel's "this attempt was paid" becomes a receipt.
One transaction, two statements (Core, no ORM unit of work): a locking read of the bill and
the attempt rows (`FOR UPDATE`, bill first), then ONE write statement of data-modifying CTEs
that moves the attempt to SUCCEEDED through the ATTEMPT machine (guarded UPDATE), inserts the
receipt, moves the bill ISSUED → PAID and inserts its event, the audit row and the outbox
messages (multi-row). The unique indexes on `receipts` are the final guard: a concurrent or
repeated confirmation that slips past the state checks fails on them, rolls back whole and
is answered ALREADY_CONFIRMED.

There is no Redis lock in front any more: concurrent confirmations of one bill queue on the
bill's row lock, which serialises them exactly; a Redis lock only added two round trips
(acquire, release) to every confirmation and could not replace the row lock anyway.

Money is never dropped: a confirmation for a bill that can no longer be paid (already paid
through another attempt, cancelled, expired, or an exam fee / tuition paid after its hard
deadline) is recorded as a DUPLICATE receipt with an automatic channel refund (退付).
A success arriving after our expiry job CLOSED the attempt is applied as the payment when
the bill is still ISSUED (for fines this is the point: the money arrived, the fine is paid;
EXAM_FEE/TUITION judge by the channel's paid_at against the bill's expiry), otherwise it
is a duplicate and refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum
from typing import Any, cast

import structlog
from sqlalchemy import (
    BindParameter,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from billing import audit, outbox
from billing.kv import KV
from billing.models import Bill, BillEvent
from billing.states import ATTEMPT, BILL, AttemptStatus, BillStatus
from billing.webhooks import TOPIC as WEBHOOK_TOPIC
from settlement import bills, ledger
from settlement.business_day import business_date
from settlement.models import PaymentAttempt, Receipt, Refund
from settlement.refunds import TOPIC_EXECUTE

log = structlog.get_logger(__name__)


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


def bill_is_payable(bill: Bill | BillFacts, paid_at: datetime) -> bool:
    """Whether money paid at `paid_at` can be this bill's payment (see the module doc)."""
    if bill.status != BillStatus.ISSUED:
        return False
    return not (bill.category in bills.FIXED_DEADLINE_CATEGORIES and paid_at > bill.expires_at)


@dataclass(frozen=True, slots=True)
class BillFacts:
    """What a confirmation needs of the (locked) bill row."""

    id: uuid.UUID
    agency_id: uuid.UUID
    agency_bill_no: str
    payment_code: str
    category: str
    status: str
    principal_amount: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    id: uuid.UUID
    bill_id: uuid.UUID
    channel: str
    status: str
    amount: int
    channel_trade_no: str | None
    new: dict[str, Any] | None = None
    """Column values of an attempt to INSERT (already SUCCEEDED) instead of updating one: a
    bank confirmation without a prior query opens and confirms it in one transaction."""


_B = cast(Table, Bill.__table__)
_A = cast(Table, PaymentAttempt.__table__)
_R = cast(Table, Receipt.__table__)
_RF = cast(Table, Refund.__table__)
_EV = cast(Table, BillEvent.__table__)
_AU = cast(Table, audit.AuditEntry.__table__)
_OB = cast(Table, outbox.OutboxMessage.__table__)
BILL_COLUMNS = (
    _B.c.id,
    _B.c.agency_id,
    _B.c.agency_bill_no,
    _B.c.payment_code,
    _B.c.category,
    _B.c.status,
    _B.c.principal_amount,
    _B.c.expires_at,
)


def bill_facts(row: Any) -> BillFacts:
    return BillFacts(*(row[i] for i in range(len(BILL_COLUMNS))))


async def confirm_payment(
    sessions: async_sessionmaker[AsyncSession],
    redis: KV | None,
    *,
    attempt_id: uuid.UUID,
    channel_trade_no: str | None,
    amount: int,
    paid_at: datetime,
    source: str,
    cutoff: time = time(0, 0),
    bill_id: uuid.UUID | None = None,
    channel: str | None = None,
) -> ConfirmResult:
    """Record that the channel took `amount` fen for this attempt; safe to call any number
    of times, concurrently. `source` says who told us (notify, query, bank confirm...).
    `bill_id` / `channel`, when given, must be the attempt's (else UNKNOWN_ATTEMPT).

    `redis` only drops the cached summary after the commit (None: the TTL bounds it)."""
    try:
        async with core_transaction(sessions) as conn:
            result, payment_code = await apply_confirmation(
                conn,
                attempt_id=attempt_id,
                bill_id=bill_id,
                channel_trade_no=channel_trade_no,
                amount=amount,
                paid_at=paid_at,
                source=source,
                cutoff=cutoff,
                channel=channel,
            )
    except IntegrityError as exc:
        # The unique indexes caught a confirmation the state checks did not: the whole
        # transaction is rolled back, which is exactly "changes nothing".
        log.info(
            "confirmation already recorded",
            attempt_id=str(attempt_id),
            source=source,
            constraint=str(exc.orig)[:200],
        )
        return ConfirmResult(ConfirmOutcome.ALREADY_CONFIRMED, attempt_id, bill_id)
    await after_commit(redis, result, payment_code, source)
    return result


class ConfirmGate:
    """At most `size` confirmation transactions in the database at once (per process); the
    others wait for a turn before taking a connection. Past a few per core, more concurrent
    transactions only add PostgreSQL lock contention (see DatabaseSettings). One semaphore
    per event loop, as asyncio primitives belong to one loop."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_loop: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def resize(self, size: int) -> None:
        if size != self.size:
            self.size, self._by_loop = size, {}

    def turn(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._by_loop.get(loop)
        if gate is None:
            if len(self._by_loop) >= 8:  # loops of finished tests
                self._by_loop.clear()
            gate = self._by_loop[loop] = asyncio.Semaphore(self.size)
        return gate


CONFIRM_GATE = ConfirmGate(6)
"""Sized from settings when the process's resources open (gateway.state.Resources)."""


@contextlib.asynccontextmanager
async def core_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A Core transaction on the sessions' engine (commit on success, rollback on error),
    taken in turn through CONFIRM_GATE: these statements need no ORM Session, whose set-up
    costs more than a round trip."""
    async with CONFIRM_GATE.turn():
        bind = sessions.kw.get("bind")
        if isinstance(bind, AsyncEngine):
            async with bind.begin() as conn:
                yield conn
            return
        async with sessions() as s, s.begin():  # bound some other way: go through a session
            yield await s.connection()


async def after_commit(
    redis: KV | None, result: ConfirmResult, payment_code: str, source: str
) -> None:
    """Once the confirmation is committed: drop the cached summary of a bill it changed."""
    if result.outcome in {ConfirmOutcome.APPLIED, ConfirmOutcome.DUPLICATE_REFUNDING}:
        if redis is not None:
            await bills.invalidate(redis, payment_code)
        log.info(
            "payment confirmed",
            outcome=result.outcome,
            attempt_id=str(result.attempt_id),
            bill_id=str(result.bill_id),
            source=source,
        )


async def apply_confirmation(
    conn: AsyncConnection,
    *,
    attempt_id: uuid.UUID,
    bill_id: uuid.UUID | None,
    channel_trade_no: str | None,
    amount: int,
    paid_at: datetime,
    source: str,
    cutoff: time,
    channel: str | None = None,
) -> tuple[ConfirmResult, str]:
    """The confirmation inside the caller's transaction: (result, the bill's payment code).

    One locking read of the bill and the attempt (bill first, as every path locks them),
    then one write statement. An IntegrityError from it means "already recorded": the
    caller rolls back.
    """
    stmt = _locking_read(by_bill=bill_id is not None, by_channel=channel is not None)
    params = {"p_attempt_id": attempt_id, "p_bill_id": bill_id, "p_channel": channel}
    row = (await conn.execute(stmt, params)).first()
    if row is None:
        log.warning("confirmation for an unknown attempt", attempt_id=str(attempt_id))
        return ConfirmResult(ConfirmOutcome.UNKNOWN_ATTEMPT, attempt_id), ""
    bill = bill_facts(row)
    attempt = AttemptFacts(
        id=attempt_id,
        bill_id=bill.id,
        channel=row.channel,
        status=row.attempt_status,
        amount=row.attempt_amount,
        channel_trade_no=row.channel_trade_no,
    )
    return await apply_to_locked(
        conn,
        bill,
        attempt,
        channel_trade_no=channel_trade_no,
        amount=amount,
        paid_at=paid_at,
        source=source,
        cutoff=cutoff,
    )


async def apply_to_locked(
    conn: AsyncConnection,
    bill: BillFacts,
    attempt: AttemptFacts,
    *,
    channel_trade_no: str | None,
    amount: int,
    paid_at: datetime,
    source: str,
    cutoff: time,
) -> tuple[ConfirmResult, str]:
    """Decide and write, with the bill row (and an existing attempt row) locked by the
    caller in this transaction."""
    attempt_id, code = attempt.id, bill.payment_code
    if channel_trade_no and attempt.channel_trade_no not in (None, channel_trade_no):
        log.error(
            "confirmation names another channel trade for this attempt",
            attempt_id=str(attempt_id),
            known=attempt.channel_trade_no,
            got=channel_trade_no,
        )
        return ConfirmResult(ConfirmOutcome.REJECTED_STATE, attempt_id, bill.id), code
    if amount != attempt.amount:
        log.warning(
            "confirmation amount differs",
            attempt_id=str(attempt_id),
            expected=attempt.amount,
            got=amount,
        )
        return ConfirmResult(ConfirmOutcome.REJECTED_AMOUNT, attempt_id, bill.id), code
    if attempt.status == AttemptStatus.SUCCEEDED:
        known = (
            await conn.execute(select(_R.c.id, _R.c.kind).where(_R.c.attempt_id == attempt_id))
        ).first()
        return (
            ConfirmResult(
                ConfirmOutcome.ALREADY_CONFIRMED,
                attempt_id,
                bill.id,
                known.id if known else None,
                receipt_kind=known.kind if known else None,
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
        return ConfirmResult(ConfirmOutcome.REJECTED_STATE, attempt_id, bill.id), code
    trade_no = channel_trade_no or attempt.channel_trade_no
    payable = bill_is_payable(bill, paid_at)
    receipt_id = uuid.uuid4()
    bdate = business_date(paid_at, cutoff)
    late_fee = max(0, amount - bill.principal_amount) if payable else 0
    params: dict[str, Any] = {
        "p_attempt_id": attempt_id,
        "p_trade_no": trade_no,
        "p_seen_status": attempt.status,
        "p_receipt_id": receipt_id,
        "p_bill_id": bill.id,
        "p_channel": attempt.channel,
        "p_kind": "PAYMENT" if payable else "DUPLICATE",
        "p_amount": amount,
        # A duplicate's refund is opened with it and reserves the whole amount, as
        # settlement.refunds.request_refund does ("amount available" guard).
        "p_reserved": 0 if payable else amount,
        "p_late_fee": late_fee,
        "p_paid_at": paid_at,
        "p_business_date": bdate,
        "p_actor": source[:64],
        "p_object_id": str(bill.id),
        "p_request_id": structlog.contextvars.get_contextvars().get("request_id"),
    }
    if attempt.new is not None:
        params |= {f"p_new_{k}": v for k, v in attempt.new.items() if k in _NEW_ATTEMPT_KEYS}
    if payable:
        BILL.check(bill.status, BillStatus.PAID)
        detail = {"attempt_id": str(attempt_id), "receipt_id": str(receipt_id)}
        params |= {
            "p_event_detail": detail,
            "p_audit_detail": {**detail, "amount": amount},
            "p_webhook_key": f"bill.paid:{bill.id}",
            "p_webhook_payload": {
                "event": "bill.paid",
                "agency_id": str(bill.agency_id),
                "bill_id": str(bill.id),
                "data": {
                    "agency_bill_no": bill.agency_bill_no,
                    "payment_code": bill.payment_code,
                    "amount": amount,
                    "late_fee": late_fee,
                    "channel": attempt.channel,
                    "attempt_id": str(attempt_id),
                    "receipt_id": str(receipt_id),
                    "paid_at": paid_at.isoformat(),
                    "business_date": bdate.isoformat(),
                },
            },
            "p_enote_key": f"enote.issue:{receipt_id}",
            "p_enote_payload": {"receipt_id": str(receipt_id)},
        }
        result = ConfirmResult(
            ConfirmOutcome.APPLIED, attempt_id, bill.id, receipt_id, receipt_kind="PAYMENT"
        )
    else:
        refund_id = uuid.uuid4()
        params |= {
            "p_refund_id": refund_id,
            "p_audit_detail": {
                "attempt_id": str(attempt_id),
                "receipt_id": str(receipt_id),
                "refund_id": str(refund_id),
                "bill_status": bill.status,
                "amount": amount,
            },
            "p_refund_key": f"refund.execute:{refund_id}",
            "p_refund_payload": {"refund_id": str(refund_id)},
        }
        log.warning(
            "duplicate payment recorded; refund opened",
            bill_id=str(bill.id),
            bill_status=bill.status,
            refund_id=str(refund_id),
        )
        result = ConfirmResult(
            ConfirmOutcome.DUPLICATE_REFUNDING,
            attempt_id,
            bill.id,
            receipt_id,
            refund_id,
            receipt_kind="DUPLICATE",
        )
    changed = await conn.scalar(
        _write_statement(new_attempt=attempt.new is not None, payable=payable), params
    )
    # We hold the row locks: the guarded UPDATE cannot miss (a new attempt is inserted).
    assert changed == 1, "attempt changed under its row lock"
    # The books move in the same transaction as the money (issue: ledger postings are
    # never a step behind the business change).
    await ledger.post_receipt_row(
        conn,
        receipt_id=receipt_id,
        kind="PAYMENT" if payable else "DUPLICATE",
        channel=attempt.channel,
        amount=amount,
        business_date=bdate,
    )
    return result, code


@functools.cache
def _locking_read(*, by_bill: bool, by_channel: bool) -> Select[Any]:
    """The bill and attempt rows, locked (bill first in FROM: locks are taken in that order)."""
    stmt = (
        select(
            *BILL_COLUMNS,
            _A.c.channel,
            _A.c.status.label("attempt_status"),
            _A.c.amount.label("attempt_amount"),
            _A.c.channel_trade_no,
        )
        .select_from(_B.join(_A, _A.c.bill_id == _B.c.id))
        .where(_A.c.id == _p("p_attempt_id"))
        .with_for_update()
    )
    if by_bill:
        stmt = stmt.where(_B.c.id == _p("p_bill_id"))
    if by_channel:
        stmt = stmt.where(_A.c.channel == _p("p_channel"))
    return stmt


_NEW_ATTEMPT_KEYS = ("bill_id", "channel", "mode", "amount", "expires_at", "next_check_at")


def _p(name: str) -> BindParameter[Any]:
    """A named parameter (typed from the column it is compared with or assigned to)."""
    return bindparam(name)


@functools.cache
def _write_statement(*, new_attempt: bool, payable: bool) -> Select[int]:
    """Every write of a confirmation as ONE statement of data-modifying CTEs (they all run,
    once, whether read or not; their foreign keys are checked at the end of the statement).

    Built once per shape with bind parameters, so a confirmation neither builds nor compiles
    SQL. The unique indexes on receipts (and attempts) still speak, as an IntegrityError.
    """
    att: Insert | Update
    if new_attempt:
        att = insert(_A).values(
            id=_p("p_attempt_id"),
            status=AttemptStatus.SUCCEEDED,
            channel_trade_no=_p("p_trade_no"),
            **{k: _p(f"p_new_{k}") for k in _NEW_ATTEMPT_KEYS},
        )
    else:
        att = (
            update(_A)
            .where(_A.c.id == _p("p_attempt_id"), _A.c.status == _p("p_seen_status"))
            .values(
                status=AttemptStatus.SUCCEEDED,
                channel_trade_no=_p("p_trade_no"),
                updated_at=func.now(),
            )
        )
    writes: list[Any] = [
        insert(_R).values(
            id=_p("p_receipt_id"),
            bill_id=_p("p_bill_id"),
            attempt_id=_p("p_attempt_id"),
            channel=_p("p_channel"),
            channel_trade_no=_p("p_trade_no"),
            kind=_p("p_kind"),
            amount=_p("p_amount"),
            refunded_amount=_p("p_reserved"),
            late_fee_amount=_p("p_late_fee"),
            paid_at=_p("p_paid_at"),
            business_date=_p("p_business_date"),
        )
    ]
    audit_row = {
        "actor_type": "system",
        "actor_id": _p("p_actor"),
        "object_type": "bill",
        "object_id": _p("p_object_id"),
        "detail": _p("p_audit_detail"),
        "request_id": _p("p_request_id"),
    }
    if payable:
        writes += [
            update(_B)
            .where(_B.c.id == _p("p_bill_id"), _B.c.status == BillStatus.ISSUED)
            .values(
                status=BillStatus.PAID,
                paid_amount=_p("p_amount"),
                paid_at=_p("p_paid_at"),
                updated_at=func.now(),
            ),
            insert(_EV).values(
                bill_id=_p("p_bill_id"),
                from_status=BillStatus.ISSUED,
                to_status=BillStatus.PAID,
                actor_type="system",
                actor_id=_p("p_actor"),
                reason="payment confirmed",
                detail=_p("p_event_detail"),
            ),
            insert(_AU).values(action="payment.confirmed", **audit_row),
            # Two single-row INSERTs, not one multi-row VALUES: SQLAlchemy cannot cache
            # a multi-row VALUES statement and would compile it on every confirmation.
            pg_insert(_OB)
            .values(topic=WEBHOOK_TOPIC, key=_p("p_webhook_key"), payload=_p("p_webhook_payload"))
            .on_conflict_do_nothing(constraint=outbox.KEY_CONSTRAINT),
            pg_insert(_OB)
            .values(topic="enote.issue", key=_p("p_enote_key"), payload=_p("p_enote_payload"))
            .on_conflict_do_nothing(constraint=outbox.KEY_CONSTRAINT),
        ]
    else:
        writes += [
            insert(_RF).values(
                id=_p("p_refund_id"),
                receipt_id=_p("p_receipt_id"),
                bill_id=_p("p_bill_id"),
                amount=_p("p_amount"),
                route="CHANNEL",
                reason="duplicate payment",
                requested_by_type="system",
                requested_by_id="confirm",
            ),
            insert(_AU).values(action="payment.duplicate", **audit_row),
            pg_insert(_OB)
            .values(topic=TOPIC_EXECUTE, key=_p("p_refund_key"), payload=_p("p_refund_payload"))
            .on_conflict_do_nothing(constraint=outbox.KEY_CONSTRAINT),
        ]
    att_cte = att.returning(_A.c.id).cte("att")
    ctes = [w.returning(literal_column("1")).cte(f"w{i}") for i, w in enumerate(writes)]
    return select(func.count()).select_from(att_cte).add_cte(*ctes)
