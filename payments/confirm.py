"""Confirming a payment exactly once.

`confirm_payment` is the one place a channel's "this attempt was paid" becomes a receipt.

The usual case — an open attempt of an ISSUED bill, paid before the bill's expiry, for the
attempt's amount, on a named channel — is ONE statement in its own implicit transaction
(`_APPLY`): it locks the bill and attempt rows (`FOR UPDATE`, bill first) only if every
guard holds on the locked rows, and its data-modifying CTEs move the attempt to SUCCEEDED,
insert the receipt, move the bill ISSUED → PAID with its event, the audit row, the outbox
messages and the ledger entry. One round trip with no BEGIN/COMMIT, run on the driver
connection, and shared by the confirmations that arrive meanwhile (kernel.group_commit):
most of PostgreSQL's effort was per statement, not per row.

Everything else (a repeat, a duplicate, a wrong amount, a late success, a first posting to
a new ledger account) takes the general path: one transaction, a locking read of the same
rows, the decision in Python, then one write statement — `_APPLY` again with the decided
guards when the bill is paid, a duplicate-and-refund statement otherwise. The unique
indexes on `receipts` are the final guard: a concurrent or repeated confirmation that slips
past the state checks fails on them, rolls back whole and is answered ALREADY_CONFIRMED.

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
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, cast

import asyncpg
import structlog
from sqlalchemy import (
    BindParameter,
    Select,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import TextClause

import ledger
from billing import events as bill_events
from billing import payer as bills
from billing.events import Sql
from billing.models import Bill
from billing.states import BILL, BillStatus
from billing.webhooks import TOPIC as WEBHOOK_TOPIC
from channels.base import PayMode
from kernel import outbox
from kernel.clock import business_date
from kernel.group_commit import GroupCommit, PerLoop
from kernel.kv import KV
from kernel.models import AuditEntry, OutboxMessage
from kernel.outbox import Topic
from payments.models import PaymentAttempt, Receipt, Refund
from payments.refunds import TOPIC_EXECUTE
from payments.states import ATTEMPT, AttemptStatus

__all__ = [
    "APPLY_GROUPS",
    "BILL_COLUMNS",
    "CAN_SUCCEED",
    "CONFIRM_GATE",
    "PAID_EVENT",
    "PAY_CTES",
    "PAY_WRITES",
    "AttemptFacts",
    "BillFacts",
    "ConfirmGate",
    "ConfirmOutcome",
    "ConfirmResult",
    "DriverStatement",
    "Paying",
    "after_commit",
    "apply_confirmation",
    "apply_to_locked",
    "bill_facts",
    "confirm_payment",
    "core_transaction",
    "paid_event_key",
    "payment_item",
]

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


def bill_is_payable(bill: bills.PayableFacts, paid_at: datetime) -> bool:
    """Whether money paid at `paid_at` can be this bill's payment (see the module doc): the
    same rule that refuses a new attempt (billing.payer.refusal)."""
    return bills.refusal(bill, paid_at) is None


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
    """Column values of an attempt to INSERT before confirming it (as the facts above say,
    `status` PENDING): a bank confirmation without a prior query opens and confirms it in
    one transaction."""


_B = cast(Table, Bill.__table__)
_A = cast(Table, PaymentAttempt.__table__)
_R = cast(Table, Receipt.__table__)
_RF = cast(Table, Refund.__table__)
_AU = cast(Table, AuditEntry.__table__)
_OB = cast(Table, OutboxMessage.__table__)
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
    pay_mode: PayMode | None = None,
) -> ConfirmResult:
    """Record that the channel took `amount` fen for this attempt; safe to call any number
    of times, concurrently. `source` says who told us (notify, query, bank confirm...).
    `bill_id` / `channel`, when given, must be the attempt's (else UNKNOWN_ATTEMPT).
    `pay_mode` goes on the receipt; without it, the channel's (PayMode.for_channel).

    `redis` only drops the cached summary after the commit (None: the TTL bounds it)."""
    engine = sessions.kw.get("bind")
    if isinstance(engine, AsyncEngine) and channel is not None:
        paying = Paying(
            attempt_id=attempt_id,
            bill_id=bill_id,
            channel=channel,
            channel_trade_no=channel_trade_no,
            amount=amount,
            paid_at=paid_at,
            business_date=business_date(paid_at, cutoff),
            source=source,
            pay_mode=pay_mode or PayMode.for_channel(channel),
        )
        applied = await _apply_at_once(engine, paying)
        if applied is not None:
            await after_commit(redis, *applied, source)
            return applied[0]
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
                pay_mode=pay_mode,
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
    transactions only add PostgreSQL lock contention (see DatabaseSettings)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._gates = PerLoop(self._gate)

    def _gate(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.size)

    def resize(self, size: int) -> None:
        if size != self.size:  # gates already handed out keep their size; new ones get this
            self.size, self._gates = size, PerLoop(self._gate)

    def turn(self) -> asyncio.Semaphore:
        return self._gates.get()


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
    pay_mode: PayMode | None = None,
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
        pay_mode=pay_mode,
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
    pay_mode: PayMode | None = None,
) -> tuple[ConfirmResult, str]:
    """Decide and write, with the bill row (and an existing attempt row) locked by the
    caller in this transaction."""
    attempt_id, code = attempt.id, bill.payment_code
    mode = pay_mode or PayMode.for_channel(attempt.channel)
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

    if attempt.status not in CAN_SUCCEED:
        log.error("success for an attempt that cannot succeed", status=attempt.status)
        return ConfirmResult(ConfirmOutcome.REJECTED_STATE, attempt_id, bill.id), code
    if attempt.new is not None:
        # A bank's confirmation without a prior query: its attempt opens here, PENDING as
        # every bank attempt starts, and is confirmed by the same statements as any other.
        await conn.execute(_NEW_ATTEMPT, attempt.new | {"id": attempt_id})
    trade_no = channel_trade_no or attempt.channel_trade_no
    bdate = business_date(paid_at, cutoff)
    if bill_is_payable(bill, paid_at):
        BILL.check(bill.status, BillStatus.PAID)
        paying = Paying(
            attempt_id=attempt_id,
            bill_id=bill.id,
            channel=attempt.channel,
            channel_trade_no=trade_no,
            amount=amount,
            paid_at=paid_at,
            business_date=bdate,
            source=source,
            pay_mode=mode,
        )
        # bill_is_payable judged the deadline, category by category.
        params = _apply_params([paying], statuses=[attempt.status], deadline_checked=True)
        # The rows are locked and the guards were checked above: only a channel's first
        # receipt misses, for want of its ledger accounts.
        applied = (await conn.execute(_APPLY.clause, params)).first()
        if applied is None:
            lines = ledger.receipt_lines("PAYMENT", attempt.channel, amount)
            await ledger.account_ids(conn, [code for code, _ in lines])
            applied = (await conn.execute(_APPLY.clause, params)).first()
        assert applied is not None, "attempt changed under its lock"
        result = ConfirmResult(
            ConfirmOutcome.APPLIED, attempt_id, bill.id, paying.receipt_id, receipt_kind="PAYMENT"
        )
        return result, code
    receipt_id, refund_id = uuid.uuid4(), uuid.uuid4()
    params = {
        "p_attempt_id": attempt_id,
        "p_trade_no": trade_no,
        "p_seen_status": attempt.status,
        "p_receipt_id": receipt_id,
        "p_bill_id": bill.id,
        "p_channel": attempt.channel,
        "p_pay_mode": mode.value,
        "p_amount": amount,
        "p_paid_at": paid_at,
        "p_business_date": bdate,
        "p_actor": source[:64],
        "p_object_id": str(bill.id),
        "p_request_id": structlog.contextvars.get_contextvars().get("request_id"),
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
    changed = await conn.scalar(_DUPLICATE, params)
    # We hold the row locks: the guarded UPDATE cannot miss.
    assert changed == 1, "attempt changed under its row lock"
    # The books move in the same transaction as the money (issue: ledger postings are
    # never a step behind the business change).
    await ledger.post_receipt(
        conn,
        receipt_id=receipt_id,
        kind="DUPLICATE",
        channel=attempt.channel,
        amount=amount,
        business_date=bdate,
    )
    result = ConfirmResult(
        ConfirmOutcome.DUPLICATE_REFUNDING,
        attempt_id,
        bill.id,
        receipt_id,
        refund_id,
        receipt_kind="DUPLICATE",
    )
    return result, code


def _can_succeed(status: str) -> bool:
    """Whether the attempt machine leads from `status` to SUCCEEDED (CREATED goes through
    PENDING; both edges are in the machine)."""
    path = [status]
    if status == AttemptStatus.CREATED:
        path.append(AttemptStatus.PENDING)
    path.append(AttemptStatus.SUCCEEDED)
    return all(ATTEMPT.allowed(a, b) for a, b in itertools.pairwise(path))


CAN_SUCCEED: list[str] = sorted(
    s.value for s in AttemptStatus if s != AttemptStatus.SUCCEEDED and _can_succeed(s)
)
"""Attempt statuses a confirmation may move to SUCCEEDED (from the machine, as data)."""


@dataclass(frozen=True, slots=True)
class Opening:
    """A payment by payment code with no attempt of ours yet: the attempt it opens."""

    payment_code: str
    mode: str
    expires_at: datetime
    next_check_at: datetime
    paid_day: date
    """The Asia/Shanghai day of payment: on or before the due date, no late fee is due."""

    def columns(self) -> dict[str, Any]:
        return {
            "code": self.payment_code,
            "mode": self.mode[:16],
            "expires_at": self.expires_at.isoformat(),
            "next_check_at": self.next_check_at.isoformat(),
            "paid_day": self.paid_day.isoformat(),
        }


async def open_and_confirm(
    sessions: async_sessionmaker[AsyncSession], redis: KV | None, paying: Paying
) -> ConfirmResult | None:
    """The usual bank confirmation without a prior query (`paying.opening` set): its
    attempt opened and the bill paid by `_OPEN_AND_APPLY`, grouped like `_APPLY`. None when
    a guard did not hold or the batch failed — nothing was written; the general path
    decides (a repeat, a duplicate, a late fee, a wrong amount...)."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine) or paying.opening is None:
        return None
    applied = await _apply_at_once(engine, paying)
    if applied is None:
        return None
    await after_commit(redis, *applied, paying.source)
    return applied[0]


@dataclass(frozen=True, slots=True)
class Paying:
    """One payment for `_APPLY`: what the channel said, and the ids we give its records."""

    attempt_id: uuid.UUID
    bill_id: uuid.UUID | None
    channel: str
    channel_trade_no: str | None
    amount: int
    paid_at: datetime
    business_date: date
    source: str
    pay_mode: PayMode
    receipt_id: uuid.UUID = field(default_factory=uuid.uuid4)
    opening: Opening | None = None
    """For `_OPEN_AND_APPLY`: the attempt to open, by payment code (`bill_id` None)."""
    request_id: str | None = field(
        default_factory=lambda: structlog.contextvars.get_contextvars().get("request_id")
    )


async def _apply_at_once(engine: AsyncEngine, paying: Paying) -> tuple[ConfirmResult, str] | None:
    """The usual case, by `_APPLY` in its own implicit transaction, grouped with the
    confirmations that arrive meanwhile (APPLY_GROUPS).

    None when a guard did not hold — the bill is not ISSUED, the attempt is not open or has
    another amount or trade, the bill's expiry has passed, a ledger account is missing —
    or the batch failed: nothing of this payment was written and the general path decides.
    Only "ISSUED and paid before expiry" is taken here; whether a late payment still pays
    its bill is bill_is_payable's, on the general path."""
    try:
        row = await APPLY_GROUPS.submit((engine, paying))
    except RuntimeError:  # the process is stopping
        return None
    if row is None:
        return None
    bill, code = row
    result = ConfirmResult(
        ConfirmOutcome.APPLIED, paying.attempt_id, bill, paying.receipt_id, receipt_kind="PAYMENT"
    )
    return result, code


async def _apply_batch(
    batch: list[tuple[AsyncEngine, Paying]],
) -> list[tuple[uuid.UUID, str] | None]:
    """One `_APPLY` per engine in the batch (one, outside tests): (bill id, payment code)
    for each payment it made, None for one whose guards did not hold."""
    made: dict[tuple[int, uuid.UUID], tuple[uuid.UUID, str]] = {}
    for engine in {id(e): e for e, _ in batch}.values():
        for opening in (False, True):  # a statement for each kind the batch holds
            payings = [p for e, p in batch if e is engine and (p.opening is not None) == opening]
            if payings:
                for attempt_id, row in (await _apply_on(engine, payings, opening)).items():
                    made[id(engine), attempt_id] = row
    return [made.get((id(e), p.attempt_id)) for e, p in batch]


async def _apply_on(
    engine: AsyncEngine, payings: list[Paying], opening: bool
) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
    """`_APPLY` (or `_OPEN_AND_APPLY`) on the driver connection (SQLAlchemy's
    per-statement work was most of a confirmation's Python); nothing made when the
    statement fails as a whole."""
    params = _apply_params(payings, statuses=CAN_SUCCEED, deadline_checked=False)
    statement = _OPEN_AND_APPLY if opening else _APPLY
    rows = await statement.fetch_grouped(engine, params) or []
    return {r["attempt_id"]: (r["bill_id"], str(r["payment_code"])) for r in rows}


APPLY_GROUPS: GroupCommit[tuple[AsyncEngine, Paying], tuple[uuid.UUID, str] | None] = GroupCommit(
    _apply_batch, lanes=6, max_batch=32, key=lambda item: (id(item[0]), item[1].attempt_id)
)
"""Lanes sized with CONFIRM_GATE (gateway.state.Resources); a batch is one engine's."""


def _apply_params(
    payings: list[Paying], *, statuses: list[str], deadline_checked: bool
) -> dict[str, Any]:
    """`_APPLY`'s parameters: the payments as one JSON array of records.

    One jsonb, not an array per column: PostgreSQL sees through a constant array to its
    length when it plans, so a custom plan (1 row) always looked cheaper than the generic
    one (100) and the statement was planned afresh on every execution — 2.4 ms of its
    2.9 ms. jsonb_to_recordset looks the same to both, and the generic plan is kept."""
    return {
        "items": json.dumps([payment_item(p) for p in payings]),
        "statuses": statuses,
        "deadline_checked": deadline_checked,
    }


def payment_item(p: Paying) -> dict[str, Any]:
    """One payment as a JSON record for `PAY_WRITES` (the columns its `lk` reads)."""
    (debit, _), (credit, _) = ledger.receipt_lines("PAYMENT", p.channel, p.amount)
    return {
        "attempt_id": str(p.attempt_id),
        "bill_id": None if p.bill_id is None else str(p.bill_id),
        "channel": p.channel,
        "trade_no": p.channel_trade_no,
        "pay_mode": p.pay_mode.value,
        "amount": p.amount,
        "paid_at": p.paid_at.isoformat(),  # for the column; the webhook gets the text
        "paid_at_text": p.paid_at.isoformat(),
        "receipt_id": str(p.receipt_id),
        "business_date": p.business_date.isoformat(),
        "actor": p.source[:64],
        "request_id": p.request_id,
        "memo": ledger.receipt_memo("PAYMENT", p.channel),
        **(p.opening.columns() if p.opening is not None else {}),
        "debit_code": debit,
        "credit_code": credit,
    }


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A text() statement also compiled once for asyncpg ($n placeholders), to run on the
    driver connection where SQLAlchemy's per-execute work would cost more than the query."""

    clause: TextClause
    sql: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, sql: str) -> DriverStatement:
        clause = text(sql)
        compiled = clause.compile(dialect=pg_asyncpg.dialect())  # type: ignore[no-untyped-call]
        return cls(clause, str(compiled), tuple(compiled.positiontup or ()))

    async def fetch(self, driver: Any, params: dict[str, Any]) -> list[Any]:
        return list(await driver.fetch(self.sql, *(params[n] for n in self.names)))

    async def fetch_grouped(self, engine: AsyncEngine, params: dict[str, Any]) -> list[Any] | None:
        """Run a grouped statement (the writes of several callers) on a driver connection of
        `engine`. None when it wrote nothing, so each caller's own path decides for itself."""
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            try:
                return await self.fetch(driver, params)
            except (asyncpg.IntegrityConstraintViolationError, asyncpg.TransactionRollbackError):
                # Two payments of one bill in the batch, a trade number seen before, or a
                # deadlock with another path: rolled back whole.
                return None
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
                # A connection the server dropped: out of the pool; the general paths retry
                # on others (a commit whose answer was lost shows there).
                await conn.invalidate(exc)
                return None
            except (
                asyncpg.exceptions.OperatorInterventionError,
                asyncpg.InternalClientError,
            ) as exc:
                # The server ended the backend (terminated, shutting down), its goodbye read
                # while the connection idled in the pool: the same, once the connection is
                # shut.
                if driver is None or not driver.is_closed():
                    raise
                await conn.invalidate(exc)
                return None


PAID_EVENT = "bill.paid:"
"""Key prefix of a payment's `bill.paid` webhook (+ its receipt id): per payment, not per
bill, so a bill paid again after its payment was taken back is announced again."""


def paid_event_key(receipt_id: uuid.UUID) -> str:
    return f"{PAID_EVENT}{receipt_id}"


_PAID = BillStatus.PAID.value
(_PAYABLE,) = BILL.sources(_PAID)  # one source: the statement's events name it
_PAID_EVENTS = bill_events.insert_sql(
    "lk",
    bill_id=Sql("paid_bill"),
    src=BillStatus(_PAYABLE),
    dst=BillStatus.PAID,
    actor_type="system",
    actor_id=Sql("actor"),
    reason="payment confirmed",
    detail=Sql(
        "jsonb_build_object('attempt_id', CAST(attempt_id AS text),"
        " 'receipt_id', CAST(receipt_id AS text))"
    ),
)
PAY_CTES = (
    f" paid AS (UPDATE bills AS b SET status = '{_PAID}', paid_amount = lk.amount,"  # noqa: S608 - constants only
    " paid_at = lk.paid_at, updated_at = now() FROM lk WHERE b.id = lk.paid_bill RETURNING b.id),"
    " rc AS (INSERT INTO receipts (id, bill_id, attempt_id, channel, channel_trade_no, kind,"
    " pay_mode, amount, refunded_amount, late_fee_amount, paid_at, business_date)"
    " SELECT receipt_id, paid_bill, attempt_id, channel, final_trade_no, 'PAYMENT', pay_mode,"
    " amount, 0, late_fee, paid_at, business_date FROM lk RETURNING id),"
    f" ev AS ({_PAID_EVENTS}),"
    " au AS (INSERT INTO audit_log (actor_type, actor_id, action, object_type, object_id,"
    " detail, request_id) SELECT 'system', actor, 'payment.confirmed', 'bill',"
    " CAST(paid_bill AS text), jsonb_build_object('attempt_id', CAST(attempt_id AS text),"
    " 'receipt_id', CAST(receipt_id AS text), 'amount', amount), request_id FROM lk"
    " RETURNING id),"
    # The agency's webhook (billing.webhooks) and the payer's e-note (enotes).
    " ob AS (INSERT INTO outbox (topic, key, payload)"
    f" SELECT '{WEBHOOK_TOPIC}', '{PAID_EVENT}' || CAST(receipt_id AS text), jsonb_build_object("
    " 'event', 'bill.paid', 'agency_id', CAST(agency_id AS text),"
    " 'bill_id', CAST(paid_bill AS text), 'data', jsonb_build_object("
    " 'agency_bill_no', agency_bill_no, 'payment_code', payment_code, 'amount', amount,"
    " 'late_fee', late_fee, 'channel', channel, 'attempt_id', CAST(attempt_id AS text),"
    " 'receipt_id', CAST(receipt_id AS text), 'paid_at', paid_at_text,"
    " 'business_date', CAST(business_date AS text))) FROM lk"
    f" UNION ALL SELECT '{Topic.ENOTE_ISSUE}', '{Topic.ENOTE_ISSUE}:' || CAST(receipt_id AS text),"
    " jsonb_build_object('receipt_id', CAST(receipt_id AS text)) FROM lk"
    f" ON CONFLICT ON CONSTRAINT {outbox.KEY_CONSTRAINT} DO NOTHING RETURNING id),"
    # Each receipt's ledger entry (ledger.posting_ctes).
    " src AS (SELECT CAST('receipt' AS varchar) AS kind, CAST(receipt_id AS varchar) AS ref,"
    " business_date, memo, CAST(NULL AS bigint) AS reverses_id,"
    " ARRAY[debit_code, credit_code] AS codes, ARRAY[amount, -amount] AS amounts FROM lk),"
    f" {ledger.posting_ctes('src')}"
)
"""The writes of a payment, from `lk` (its locked rows, with the guards held), as CTEs: the
bill to PAID, the receipt, the bill's event, the audit row, the outbox messages and the
ledger entry. A channel's own one-statement payment (payments.pos.service, kiosks.kiosk)
builds its `lk` from `payment_item` records and ends with its own SELECT."""
_PAY_WRITES = PAY_CTES + " SELECT attempt_id, paid_bill AS bill_id, payment_code FROM lk"  # noqa: S608 - constants only
"""PAY_CTES, then one row (attempt, bill, payment code) per payment made."""
PAY_WRITES = _PAY_WRITES
"""For a channel's own one-statement payment that answers as `_APPLY` does."""
_APPLY = DriverStatement.of(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(attempt_id uuid,"  # noqa: S608 - constants only
    " bill_id uuid, channel varchar, trade_no varchar, pay_mode varchar, amount bigint,"
    " paid_at timestamptz,"
    " paid_at_text text, receipt_id uuid, business_date date, actor varchar,"
    " request_id varchar, memo text, debit_code text, credit_code text)),"
    # lk: each payment's bill and attempt rows, locked (bill first, bills in id order, as
    # every path locks them) only if every guard holds on the locked versions; each write
    # below is a no-op for a payment without them.
    " lk AS (SELECT i.*, b.agency_id, b.agency_bill_no, b.payment_code, b.principal_amount,"
    " b.id AS paid_bill, coalesce(i.trade_no, a.channel_trade_no) AS final_trade_no,"
    " greatest(0, i.amount - b.principal_amount) AS late_fee"
    " FROM i JOIN payment_attempts AS a ON a.id = i.attempt_id"
    " JOIN bills AS b ON b.id = a.bill_id"
    " WHERE a.channel = i.channel AND (i.bill_id IS NULL OR b.id = i.bill_id)"
    " AND a.status = ANY(CAST(:statuses AS varchar[])) AND a.amount = i.amount"
    " AND (a.channel_trade_no IS NULL OR i.trade_no IS NULL OR a.channel_trade_no = i.trade_no)"
    f" AND b.status = '{_PAYABLE}'"
    " AND (CAST(:deadline_checked AS boolean) OR i.paid_at <= b.expires_at)"
    " AND (SELECT count(*) FROM ledger_accounts WHERE code IN (i.debit_code, i.credit_code)) = 2"
    " ORDER BY b.id FOR UPDATE OF b, a),"
    f" att AS (UPDATE payment_attempts AS a SET status = '{AttemptStatus.SUCCEEDED.value}',"
    " channel_trade_no = lk.final_trade_no, updated_at = now()"
    " FROM lk WHERE a.id = lk.attempt_id RETURNING a.id)," + _PAY_WRITES
)
"""Pay bills with these attempts: every write of the confirmations as ONE statement of
data-modifying CTEs (each runs once, whether read or not; foreign keys and the ledger's
balance trigger are checked at its end). One row (attempt, bill, payment code) per payment
it made; a payment whose guards did not hold has none."""

_OPEN_AND_APPLY = DriverStatement.of(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(attempt_id uuid,"  # noqa: S608 - constants only
    " code varchar, channel varchar, trade_no varchar, pay_mode varchar, mode varchar,"
    " amount bigint, paid_at timestamptz, paid_at_text text, paid_day date,"
    " expires_at timestamptz, next_check_at timestamptz, receipt_id uuid,"
    " business_date date, actor varchar, request_id varchar, memo text, debit_code text,"
    " credit_code text)),"
    # lk: the bill of each payment code, locked, when it can take this payment as it
    # stands: payable, before its expiry, the amount its principal, paid by its due date
    # (so no late fee can be due), and the channel's reference not seen before.
    " lk AS (SELECT i.*, b.agency_id, b.agency_bill_no, b.payment_code, b.principal_amount,"
    " b.id AS paid_bill, i.trade_no AS final_trade_no, CAST(0 AS bigint) AS late_fee"
    " FROM i JOIN bills AS b ON b.payment_code = i.code"
    f" WHERE b.status = '{_PAYABLE}' AND i.paid_at <= b.expires_at"
    " AND i.amount = b.principal_amount AND i.paid_day <= b.due_date"
    " AND NOT EXISTS (SELECT 1 FROM payment_attempts AS k"
    " WHERE k.channel = i.channel AND k.channel_trade_no = i.trade_no)"
    " AND (SELECT count(*) FROM ledger_accounts WHERE code IN (i.debit_code, i.credit_code)) = 2"
    " ORDER BY b.id FOR UPDATE OF b),"
    " att AS (INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount,"
    " channel_trade_no, expires_at, next_check_at)"
    f" SELECT attempt_id, paid_bill, channel, mode, '{AttemptStatus.SUCCEEDED.value}', amount,"
    " trade_no, expires_at, next_check_at FROM lk RETURNING id)," + _PAY_WRITES
)
"""A channel's payment by payment code with no attempt of ours yet (a bank's confirmation
without a prior query): open its attempt, already SUCCEEDED, and pay the bill, as ONE
statement like `_APPLY`. A payment whose guards did not hold has no row: the general path
(payments.inbound) decides it."""


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


_NEW_ATTEMPT = insert(_A).values(status=AttemptStatus.PENDING)
"""A bank's attempt opened by its confirmation (AttemptFacts.new's columns as parameters)."""


def _p(name: str) -> BindParameter[Any]:
    """A named parameter (typed from the column it is compared with or assigned to)."""
    return bindparam(name)


def _duplicate_statement() -> Select[int]:
    """A duplicate payment's writes as ONE statement of data-modifying CTEs: the attempt
    to SUCCEEDED (guarded UPDATE), a DUPLICATE receipt whose refund is opened with it and
    reserves the whole amount (as payments.refunds.request_refund does), the audit row
    and the refund's outbox message. Built once, with bind parameters. The unique indexes
    on receipts (and attempts) still speak, as an IntegrityError."""
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
            kind="DUPLICATE",
            pay_mode=_p("p_pay_mode"),
            amount=_p("p_amount"),
            refunded_amount=_p("p_amount"),
            late_fee_amount=0,
            paid_at=_p("p_paid_at"),
            business_date=_p("p_business_date"),
        ),
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
        insert(_AU).values(
            action="payment.duplicate",
            actor_type="system",
            actor_id=_p("p_actor"),
            object_type="bill",
            object_id=_p("p_object_id"),
            detail=_p("p_audit_detail"),
            request_id=_p("p_request_id"),
        ),
        pg_insert(_OB)
        .values(topic=TOPIC_EXECUTE, key=_p("p_refund_key"), payload=_p("p_refund_payload"))
        .on_conflict_do_nothing(constraint=outbox.KEY_CONSTRAINT),
    ]
    att_cte = att.returning(_A.c.id).cte("att")
    ctes = [w.returning(literal_column("1")).cte(f"w{i}") for i, w in enumerate(writes)]
    return select(func.count()).select_from(att_cte).add_cte(*ctes)


_DUPLICATE = _duplicate_statement()
