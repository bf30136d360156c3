"""What a card terminal's messages do: inquiry, sale, reversal, void, refund, batch settlement.

Rules (the protocol is in docs/channels/pos.md):

- Every transaction is keyed as the terminal keys it: terminal, batch number, trace number
  (`pos_transactions`, unique). An identical repeat answers as the first did; the same key
  with other content is refused (94) and writes nothing.
- A sale is money the acquirer already approved. It is taken when the bill is ISSUED, of
  the terminal's agency and the amount is today's amount due; otherwise refused (and the
  terminal voids it at the acquirer), writing nothing. Taken: the usual sale (the bill
  simply payable) is recorded and paid by ONE statement, grouped with the sales that
  arrive meanwhile — its transaction row, its attempt and the payment's writes as any
  channel's confirmation makes them (payments.confirm). Any other: one statement records
  the transaction and opens its attempt, then confirm_payment pays the bill.
- A reversal (冲正) names the sale's batch and trace. Whatever the order, the bill, its
  receipts and the ledger end as if the sale never happened: arriving first it leaves a
  REVERSED row (a tombstone) under the sale's key, so the sale, when it comes, finds the
  key taken and is refused (B3); arriving while a two-step sale is in flight it moves the
  attempt to REVERSED, which the confirmation's guards refuse; arriving after (or while the
  one statement runs: it waits on the new row), it takes the payment
  back (payments.reversal). The transaction row serialises the two (its row lock).
- A void (撤销) has its own trace number and names a sale of the same batch; allowed while
  the batch is not settled; the payment is taken back the same way.
- A refund (退货) names a sale of a settled batch; the acquirer returns the money, so we
  record a succeeded channel refund (ledger, bill status, red-letter e-note).
- Batch settlement (批结算) compares the terminal's counts and totals per kind with ours
  and records the result with the transactions that differ.

Nothing is written for a message refused for its content; the row the terminal's key
names is the only guard a retry needs.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing import payer as bills
from billing.states import BillStatus
from channels.base import (
    BatchCheck,
    BillDue,
    ConfirmationReceipt,
    CountTotal,
    Disposition,
    DueLine,
    InboundAnswer,
    Outcome,
    PayMode,
)
from channels.pos import transforms as t
from channels.pos.inbound import NAME as CHANNEL
from kernel.audit import Actor
from kernel.clock import business_date, shanghai_today
from kernel.group_commit import GroupCommit
from payments import refunds
from payments.confirm import (
    PAY_WRITES,
    ConfirmOutcome,
    ConfirmResult,
    DriverStatement,
    Paying,
    after_commit,
    confirm_payment,
    core_transaction,
    payment_item,
)
from payments.context import PaymentContext, Sent
from payments.pos.terminals import credentials
from payments.reversal import Undone, undo_payment
from payments.states import AttemptStatus

__all__ = [
    "Terminal",
    "compare",
    "handler",
    "inquiry",
    "refund",
    "reversal",
    "sale",
    "settle",
    "void",
]

log = structlog.get_logger(__name__)


class R:
    """The answers this service gives, in our Outcome vocabulary (the terminal's codes are
    channels.pos.transforms')."""

    APPROVED = Outcome.OK
    UNKNOWN_TERMINAL = Outcome.UNKNOWN_SENDER
    NOT_ALLOWED = Outcome.NOT_ALLOWED
    AMOUNT_DIFFERS = Outcome.AMOUNT_DIFFERS
    ORIGINAL_NOT_FOUND = Outcome.NOT_CONFIRMED
    CONFLICTING_REPEAT = Outcome.DUPLICATE
    SYSTEM_ERROR = Outcome.TRY_LATER
    UNKNOWN_CODE = Outcome.UNKNOWN_CODE
    ALREADY_PAID = Outcome.ALREADY_PAID
    REVERSED = Outcome.REVERSED


@dataclass(frozen=True, slots=True)
class Terminal:
    """A verified terminal: who it is and whose bills it takes."""

    ref: uuid.UUID
    merchant_id: str
    terminal_id: str
    agency_id: uuid.UUID


class _Refused(Exception):
    """Roll the transaction back and answer this."""

    def __init__(self, answer: InboundAnswer) -> None:
        super().__init__(answer.outcome)
        self.answer = answer


def _no(outcome: Outcome, detail: str = "") -> InboundAnswer:
    return InboundAnswer(outcome, detail)


# ------------------------------------------------------------------ from the inbound seam


Operation = Callable[[PaymentContext, Terminal, Any], Awaitable[InboundAnswer]]


def handler(
    operation: Operation,
) -> Callable[[PaymentContext, Sent, Any, datetime], Awaitable[InboundAnswer]]:
    """An operation as payments.inbound calls it: the verified sender (`merchant:terminal`)
    becomes the registered terminal; a terminal gone meanwhile is an unknown sender."""

    async def run(ctx: PaymentContext, sent: Sent, request: Any, now: datetime) -> InboundAnswer:
        del now  # a terminal's message carries its own time
        merchant, _, terminal_id = (sent.sender or "").partition(":")
        found = await credentials(ctx.sessions, merchant, terminal_id)
        if found is None:
            return _no(R.UNKNOWN_TERMINAL)
        terminal = Terminal(found.ref, merchant, terminal_id, found.agency_id)
        structlog.contextvars.bind_contextvars(pos_terminal=terminal_id)
        try:
            return await operation(ctx, terminal, request)
        except _Refused as refused:
            return refused.answer

    return run


# ------------------------------------------------------------------ inquiry


async def _view(ctx: PaymentContext, terminal: Terminal, code: str) -> bills.BillView:
    async with ctx.sessions() as s:
        view = await bills.cached_view(ctx.redis, s, code, ctx.summary_cache_ttl_s)
    if view is None:
        raise _Refused(_no(R.UNKNOWN_CODE))
    if view.agency_id != terminal.agency_id:
        raise _Refused(_no(R.NOT_ALLOWED, "bill of another agency"))
    return view


def _payable(view: bills.BillView, now: datetime) -> None:
    refused = bills.refusal(view, now)
    if refused is None:
        return
    if refused[0] == "bill_not_payable":  # paid already (or settled, refunded)
        raise _Refused(_no(R.ALREADY_PAID))
    if refused[0] == "bill_cancelled":
        raise _Refused(_no(Outcome.CANCELLED, refused[1]))
    raise _Refused(_no(Outcome.EXPIRED, refused[1]))


async def inquiry(ctx: PaymentContext, terminal: Terminal, msg: t.Inquiry) -> InboundAnswer:
    now = datetime.now(UTC)
    view = await _view(ctx, terminal, msg.payment_code)
    _payable(view, now)
    due = bills.due_on(view, shanghai_today(now), ctx.day_count)
    return InboundAnswer(
        R.APPROVED,
        bill=BillDue(
            payment_code=view.payment_code,
            order_id="",  # a terminal's sale names no order: its batch and trace do
            agency_name=view.agency_name,
            payer_name=bills.mask_name(view.payer_name),
            amount=due.total,
            principal=due.principal,
            late_fee=due.late_fee,
            due_date=view.due_date,
            pay_before=view.expires_at,
            lines=tuple(DueLine(li.name, li.amount) for li in view.lines),
        ),
    )


# ------------------------------------------------------------------ sale


_FIXED = ", ".join(f"'{c}'" for c in sorted(bills.FIXED_DEADLINE_CATEGORIES))
# ONE statement in its own implicit transaction for a batch of sales (grouped like the
# confirmations, kernel.group_commit): each sale's transaction row under the terminal's key
# and the attempt it opens, both or neither. Neither when the terminal is disabled, the
# key is taken (a repeat, a tombstone), or — unless the caller judged the bill itself
# (`checked`) — the bill is not simply payable: ISSUED, of the terminal's agency, within a
# hard deadline, and the amount its principal with no late fee possible (rule NONE, or not
# past the due date). Then the general path decides in Python. Attempts are inserted after
# the rows that reference them; foreign keys are checked at the statement's end.
_SALES = DriverStatement.of(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(id uuid,"  # noqa: S608 - constants only
    " ref uuid, agency uuid, checked boolean, today date, batch_no varchar, trace_no varchar,"
    " amount bigint, payment_code varchar, attempt_id uuid, rrn varchar, card varchar,"
    " card_type varchar, acquirer varchar, issuer varchar, operator varchar,"
    " occurred_at timestamptz, settle_date varchar, digest varchar, mode varchar,"
    " trade_no varchar, expires_at timestamptz, next_check_at timestamptz)),"
    " term AS (SELECT i.id FROM i JOIN pos_terminals p ON p.id = i.ref AND p.enabled),"
    " ok AS (SELECT i.*, b.id AS bill_id FROM i JOIN term ON term.id = i.id"
    " JOIN bills b ON b.payment_code = i.payment_code AND b.agency_id = i.agency"
    f" WHERE i.checked OR (b.status = '{BillStatus.ISSUED}' AND b.principal_amount = i.amount"
    " AND (b.late_fee_rule = 'NONE' OR i.today <= b.due_date)"
    f" AND (b.category NOT IN ({_FIXED}) OR i.occurred_at <= b.expires_at))),"
    " t AS (INSERT INTO pos_transactions (id, terminal_ref, batch_no, trace_no, kind, status,"
    " amount, payment_code, bill_id, attempt_id, rrn, card, card_type, acquirer, issuer,"
    " operator, occurred_at, settle_date, digest)"
    " SELECT id, ref, batch_no, trace_no, 'SALE', 'ACCEPTED', amount, payment_code, bill_id,"
    " attempt_id, rrn, card, card_type, acquirer, issuer, operator, occurred_at, settle_date,"
    " digest FROM ok"
    " ON CONFLICT (terminal_ref, batch_no, trace_no) DO NOTHING RETURNING id),"
    " a AS (INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount,"
    " channel_trade_no, expires_at, next_check_at)"
    f" SELECT ok.attempt_id, ok.bill_id, '{CHANNEL}', ok.mode, '{AttemptStatus.PENDING}',"
    " ok.amount, ok.trade_no, ok.expires_at, ok.next_check_at FROM t JOIN ok ON ok.id = t.id"
    " RETURNING id, bill_id)"
    " SELECT i.id, term.id IS NOT NULL AS enabled, a.bill_id FROM i"
    " LEFT JOIN term ON term.id = i.id LEFT JOIN a ON a.id = i.attempt_id"
)


async def _insert_batch(
    batch: list[tuple[AsyncEngine, dict[str, Any]]],
) -> list[tuple[bool, uuid.UUID | None]]:
    """`_SALES` per engine of the batch (one, outside tests), on the driver connection.
    A batch that fails as a whole wrote nothing: each sale is then judged on its own."""
    out: dict[str, tuple[bool, uuid.UUID | None]] = {}
    for engine in {id(e): e for e, _ in batch}.values():
        items = [item for e, item in batch if e is engine]
        rows = await _SALES.fetch_grouped(engine, {"items": json.dumps(items)}) or []
        out |= {str(r["id"]): (bool(r["enabled"]), r["bill_id"]) for r in rows}
    return [out.get(item["id"], (True, None)) for _, item in batch]


SALE_GROUPS: GroupCommit[tuple[AsyncEngine, dict[str, Any]], tuple[bool, uuid.UUID | None]] = (
    GroupCommit(_insert_batch, lanes=4, max_batch=32, key=lambda item: item[1]["id"])
)


async def _insert_sale(
    ctx: PaymentContext, params: dict[str, Any]
) -> tuple[bool, uuid.UUID | None]:
    """`_SALES` for one sale, grouped with the sales that arrive meanwhile: (terminal
    enabled, the bill paid by the new attempt, or None when nothing was written)."""
    engine = ctx.sessions.kw.get("bind")
    assert isinstance(engine, AsyncEngine)
    item = {k: v if isinstance(v, bool | int | None) else str(v) for k, v in params.items()}
    return await SALE_GROUPS.submit((engine, item))


_SALE_AND_PAY = DriverStatement.of(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(id uuid,"  # noqa: S608 - constants only
    " ref uuid, agency uuid, today date, batch_no varchar, trace_no varchar, amount bigint,"
    " payment_code varchar, attempt_id uuid, rrn varchar, card varchar, card_type varchar,"
    " acquirer varchar, issuer varchar, operator varchar, occurred_at timestamptz,"
    " settle_date varchar, digest varchar, mode varchar, trade_no varchar,"
    " expires_at timestamptz, next_check_at timestamptz, channel varchar, pay_mode varchar,"
    " paid_at timestamptz, paid_at_text text, receipt_id uuid, business_date date,"
    " actor varchar, request_id varchar, memo text, debit_code text, credit_code text)),"
    # lk: each sale's bill, locked (bills in id order, as every path locks them), when the
    # terminal is enabled and the bill can take the sale as it stands — `_SALES`' guards
    # and the confirmation's (before the bill's expiry, the ledger's accounts there) —
    # and the transaction row under the terminal's key is new (`t`).
    " ok AS (SELECT i.*, b.id AS paid_bill, b.agency_id, b.agency_bill_no, b.principal_amount,"
    " i.trade_no AS final_trade_no, CAST(0 AS bigint) AS late_fee"
    " FROM i JOIN pos_terminals AS p ON p.id = i.ref AND p.enabled"
    " JOIN bills AS b ON b.payment_code = i.payment_code AND b.agency_id = i.agency"
    f" WHERE b.status = '{BillStatus.ISSUED}' AND b.principal_amount = i.amount"
    " AND (b.late_fee_rule = 'NONE' OR i.today <= b.due_date)"
    " AND i.occurred_at <= b.expires_at"
    " AND (SELECT count(*) FROM ledger_accounts WHERE code IN (i.debit_code, i.credit_code)) = 2"
    " ORDER BY b.id FOR UPDATE OF b),"
    " t AS (INSERT INTO pos_transactions (id, terminal_ref, batch_no, trace_no, kind, status,"
    " amount, payment_code, bill_id, attempt_id, rrn, card, card_type, acquirer, issuer,"
    " operator, occurred_at, settle_date, digest)"
    " SELECT id, ref, batch_no, trace_no, 'SALE', 'ACCEPTED', amount, payment_code, paid_bill,"
    " attempt_id, rrn, card, card_type, acquirer, issuer, operator, occurred_at, settle_date,"
    " digest FROM ok"
    " ON CONFLICT (terminal_ref, batch_no, trace_no) DO NOTHING RETURNING id),"
    " lk AS (SELECT ok.* FROM ok JOIN t ON t.id = ok.id),"
    # The attempt opens already SUCCEEDED: recorded and paid in this one statement.
    " att AS (INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount,"
    " channel_trade_no, expires_at, next_check_at)"
    f" SELECT attempt_id, paid_bill, channel, mode, '{AttemptStatus.SUCCEEDED}', amount,"
    " trade_no, expires_at, next_check_at FROM lk RETURNING id)," + PAY_WRITES
)
"""The usual sale recorded and paid in ONE statement in its own implicit transaction,
grouped with the sales that arrive meanwhile: `_SALES` and the confirmation's `_APPLY` in
one, as `_OPEN_AND_APPLY` is for a bank (payments.confirm). One row (attempt, bill,
payment code) per sale it took; a sale without one wrote nothing, and takes the two-step
path (`_SALES`, then confirm_payment), which tells every other case apart."""


async def _sale_pay_batch(
    batch: list[tuple[AsyncEngine, dict[str, Any]]],
) -> list[tuple[uuid.UUID, str] | None]:
    """`_SALE_AND_PAY` per engine of the batch (one, outside tests), on the driver
    connection: (bill, payment code) of each sale it took. A batch that fails as a whole
    (two sales of one bill, a deadlock) wrote nothing: each sale takes the two-step path."""
    out: dict[str, tuple[uuid.UUID, str]] = {}
    for engine in {id(e): e for e, _ in batch}.values():
        items = [item for e, item in batch if e is engine]
        rows = await _SALE_AND_PAY.fetch_grouped(engine, {"items": json.dumps(items)}) or []
        out |= {str(r["attempt_id"]): (r["bill_id"], str(r["payment_code"])) for r in rows}
    return [out.get(item["attempt_id"]) for _, item in batch]


SALE_PAY_GROUPS: GroupCommit[tuple[AsyncEngine, dict[str, Any]], tuple[uuid.UUID, str] | None] = (
    GroupCommit(_sale_pay_batch, lanes=4, max_batch=32, key=lambda item: item[1]["id"])
)


async def _sale_and_pay(
    ctx: PaymentContext, terminal: Terminal, msg: t.Sale, params: dict[str, Any]
) -> ConfirmResult | None:
    """The usual sale by `_SALE_AND_PAY`: its result when it was taken (APPLIED), else
    None — nothing was written."""
    engine = ctx.sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine):
        return None
    paying = Paying(
        attempt_id=params["attempt_id"],
        bill_id=None,
        channel=CHANNEL,
        channel_trade_no=params["trade_no"],
        amount=msg.amount,
        paid_at=msg.occurred_at,
        business_date=business_date(msg.occurred_at, ctx.cutoff),
        source=f"pos:{terminal.terminal_id}",
        pay_mode=PayMode.POS,
    )
    sale = {k: v if isinstance(v, bool | int | None) else str(v) for k, v in params.items()}
    try:
        made = await SALE_PAY_GROUPS.submit((engine, sale | payment_item(paying)))
    except RuntimeError:  # the process is stopping
        return None
    if made is None:
        return None
    bill_id, code = made
    result = ConfirmResult(
        ConfirmOutcome.APPLIED,
        paying.attempt_id,
        bill_id,
        paying.receipt_id,
        receipt_kind="PAYMENT",
    )
    await after_commit(ctx.redis, result, code, paying.source)
    return result


_BY_KEY = text(
    "SELECT x.id, x.kind, x.status, x.amount, x.digest, x.attempt_id, x.bill_id,"
    " a.status AS attempt_status, r.id AS receipt_id, r.kind AS receipt_kind,"
    " b.status AS bill_status"
    " FROM pos_transactions x LEFT JOIN payment_attempts a ON a.id = x.attempt_id"
    " LEFT JOIN receipts r ON r.attempt_id = x.attempt_id LEFT JOIN bills b ON b.id = x.bill_id"
    " WHERE x.terminal_ref = :ref AND x.batch_no = :batch_no AND x.trace_no = :trace_no"
)


async def _by_key(conn: AsyncConnection, terminal: Terminal, batch_no: str, trace_no: str) -> Any:
    params = {"ref": terminal.ref, "batch_no": batch_no, "trace_no": trace_no}
    return (await conn.execute(_BY_KEY, params)).first()


def _sale_repeat(row: Any, msg: t.Sale) -> InboundAnswer:
    """The answer to a sale whose key is taken already."""
    if row.kind == "SALE" and row.status == "REVERSED":
        return _no(R.REVERSED)  # a tombstone carries the reversal's digest, not the sale's
    if row.kind != "SALE" or row.digest != t.digest(msg):
        return _no(R.CONFLICTING_REPEAT)
    if row.attempt_status == AttemptStatus.REVERSED:
        return _no(R.REVERSED)
    if row.attempt_status == AttemptStatus.SUCCEEDED and row.receipt_kind == "PAYMENT":
        return _accepted(msg.batch_no, msg.trace_no, row.receipt_id)
    # Still in flight (the first is being confirmed) or left unconfirmed: say "try later"
    # by the system-error code; the terminal reverses.
    return _no(R.SYSTEM_ERROR, "sale in progress")


def _accepted(batch_no: str, trace_no: str, receipt_id: uuid.UUID | None = None) -> InboundAnswer:
    if receipt_id is None:
        return InboundAnswer(R.APPROVED)
    receipt = ConfirmationReceipt("", f"{batch_no}{trace_no}", str(receipt_id), Disposition.PAID)
    return InboundAnswer(R.APPROVED, receipt=receipt)


async def sale(  # noqa: PLR0911 - one answer per outcome of a sale
    ctx: PaymentContext, terminal: Terminal, msg: t.Sale
) -> InboundAnswer:
    now = datetime.now(UTC)
    attempt_id = uuid.uuid4()
    trade_no = t.trade_no(terminal.terminal_id, msg.batch_no, msg.trace_no)
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    params: dict[str, Any] = {
        "ref": terminal.ref,
        "agency": terminal.agency_id,
        "checked": False,
        "today": shanghai_today(msg.occurred_at),
        "id": uuid.uuid4(),
        "batch_no": msg.batch_no,
        "trace_no": msg.trace_no,
        "amount": msg.amount,
        "payment_code": msg.payment_code,
        "attempt_id": attempt_id,
        "rrn": msg.rrn,
        "card": msg.card,
        "card_type": msg.card_type,
        "acquirer": msg.acquirer,
        "issuer": msg.issuer,
        "operator": msg.operator,
        "occurred_at": msg.occurred_at.isoformat(),
        "settle_date": msg.settle_date,
        "digest": t.digest(msg),
        "mode": msg.card_type[:16],
        "trade_no": trade_no,
        "expires_at": expires_at.isoformat(),
        "next_check_at": min(now + timedelta(seconds=ctx.first_check_s), expires_at).isoformat(),
    }
    taken = await _sale_and_pay(ctx, terminal, msg, params)
    if taken is not None:
        return _accepted(msg.batch_no, msg.trace_no, taken.receipt_id)
    enabled, bill_id = await _insert_sale(ctx, params)
    if not enabled:
        return _no(R.UNKNOWN_TERMINAL)
    if bill_id is None:
        answer = await _sale_checked(ctx, terminal, msg, params)
        if isinstance(answer, InboundAnswer):
            return answer
        bill_id = answer
    result = await confirm_payment(
        ctx.sessions,
        ctx.redis,
        attempt_id=attempt_id,
        channel_trade_no=trade_no,
        amount=msg.amount,
        paid_at=msg.occurred_at,
        source=f"pos:{terminal.terminal_id}",
        cutoff=ctx.cutoff,
        bill_id=bill_id,
        channel=CHANNEL,
        pay_mode=PayMode.POS,
    )
    if (
        result.outcome in {ConfirmOutcome.APPLIED, ConfirmOutcome.ALREADY_CONFIRMED}
        and result.receipt_kind == "PAYMENT"
    ):
        return _accepted(msg.batch_no, msg.trace_no, result.receipt_id)
    if result.outcome == ConfirmOutcome.REJECTED_STATE:
        return _no(R.REVERSED)  # a reversal came first and closed the attempt
    if result.outcome == ConfirmOutcome.DUPLICATE_REFUNDING:
        # Paid elsewhere between our check and the confirmation: recorded as a duplicate
        # with its refund through the acquirer (as every channel's). The terminal is told
        # the bill was paid, and that this sale is given back already: it must not reverse.
        ref = f"{msg.batch_no}{msg.trace_no}"
        kept = ConfirmationReceipt("", ref, str(result.receipt_id), Disposition.REFUND)
        return InboundAnswer(R.ALREADY_PAID, receipt=kept)
    log.error("pos sale not confirmed", outcome=result.outcome)
    return _no(R.SYSTEM_ERROR)


async def _sale_checked(
    ctx: PaymentContext, terminal: Terminal, msg: t.Sale, params: dict[str, Any]
) -> InboundAnswer | uuid.UUID:
    """The general path of a sale the one statement did not take: a repeat, or a bill the
    SQL guards could not judge (a late fee, another agency, not payable...). The bill is
    judged here by the payer view's rules; the answer, or the bill the sale may pay."""
    async with ctx.sessions() as s:
        row = await _by_key(await s.connection(), terminal, msg.batch_no, msg.trace_no)
    if row is not None:
        return _sale_repeat(row, msg)
    try:
        view = await _view(ctx, terminal, msg.payment_code)
        _payable(view, msg.occurred_at)
        due = bills.due_on(view, shanghai_today(msg.occurred_at), ctx.day_count)
        if msg.amount != due.total:
            raise _Refused(_no(R.AMOUNT_DIFFERS))
    except _Refused as refused:
        return refused.answer
    enabled, bill_id = await _insert_sale(ctx, params | {"checked": True})
    if not enabled:
        return _no(R.UNKNOWN_TERMINAL)
    if bill_id is None:  # lost a race to the same key: answer as a repeat
        async with ctx.sessions() as s:
            row = await _by_key(await s.connection(), terminal, msg.batch_no, msg.trace_no)
        return _no(R.SYSTEM_ERROR) if row is None else _sale_repeat(row, msg)
    return bill_id


# ------------------------------------------------------------------ reversal


async def _terminal_enabled(conn: AsyncConnection, terminal: Terminal) -> None:
    enabled = await conn.scalar(
        text("SELECT enabled FROM pos_terminals WHERE id = :ref"), {"ref": terminal.ref}
    )
    if not enabled:
        raise _Refused(_no(R.UNKNOWN_TERMINAL))


_TOMBSTONE = text(
    "INSERT INTO pos_transactions (id, terminal_ref, batch_no, trace_no, kind, status, amount,"
    " payment_code, occurred_at, digest) VALUES (:id, :ref, :batch_no, :trace_no, 'SALE',"
    " 'REVERSED', :amount, :payment_code, :occurred_at, :digest)"
    " ON CONFLICT (terminal_ref, batch_no, trace_no) DO NOTHING RETURNING id"
)
_LOCK_KEY = text(
    "SELECT id, kind, status, amount, attempt_id, bill_id, batch_no FROM pos_transactions"
    " WHERE terminal_ref = :ref AND batch_no = :batch_no AND trace_no = :trace_no FOR UPDATE"
)
_SETTLED = text("SELECT 1 FROM pos_batches WHERE terminal_ref = :ref AND batch_no = :batch_no")
_SET_STATUS = text(
    "UPDATE pos_transactions SET status = :status, updated_at = now() WHERE id = :id"
)


async def reversal(ctx: PaymentContext, terminal: Terminal, msg: t.Reversal) -> InboundAnswer:
    codes: list[str] = []
    async with core_transaction(ctx.sessions) as conn:
        await _terminal_enabled(conn, terminal)
        if await conn.scalar(_SETTLED, {"ref": terminal.ref, "batch_no": msg.batch_no}):
            raise _Refused(_no(R.NOT_ALLOWED, "batch settled: refund instead"))
        key = {"ref": terminal.ref, "batch_no": msg.batch_no, "trace_no": msg.trace_no}
        made = await conn.scalar(
            _TOMBSTONE,
            key
            | {
                "id": uuid.uuid4(),
                "amount": msg.amount,
                "payment_code": msg.payment_code,
                "occurred_at": msg.occurred_at,
                "digest": t.digest(msg),
            },
        )
        if made is not None:
            log.info("pos reversal before its sale: tombstone", trace_no=msg.trace_no)
            return _accepted(msg.batch_no, msg.trace_no)
        row = (await conn.execute(_LOCK_KEY, key)).one()
        if row.kind != "SALE":
            raise _Refused(_no(R.NOT_ALLOWED, "only a sale can be reversed"))
        if row.amount != msg.amount:
            raise _Refused(_no(R.AMOUNT_DIFFERS))
        if row.status == "REVERSED":
            return _accepted(msg.batch_no, msg.trace_no)
        if row.status != "ACCEPTED":
            raise _Refused(_no(R.NOT_ALLOWED, "the sale was voided"))
        undone = await undo_payment(
            conn,
            attempt_id=row.attempt_id,
            reason="pos reversal",
            actor=f"pos:{terminal.terminal_id}",
        )
        if undone is None or undone.outcome == Undone.TOO_LATE:
            raise _Refused(_no(R.NOT_ALLOWED, "the sale can no longer be reversed"))
        await conn.execute(_SET_STATUS, {"id": row.id, "status": "REVERSED"})
        codes.append(undone.payment_code)
    await _invalidate(ctx, codes)
    return _accepted(msg.batch_no, msg.trace_no)


async def _invalidate(ctx: PaymentContext, codes: list[str]) -> None:
    for code in codes:
        await bills.invalidate(ctx.redis, code)


# ------------------------------------------------------------------ void


_ORIGINAL = text(
    "SELECT x.id, x.kind, x.status, x.amount, x.attempt_id, x.bill_id, x.batch_no,"
    " r.id AS receipt_id, r.amount AS receipt_amount, r.refunded_amount"
    " FROM pos_transactions x LEFT JOIN receipts r ON r.attempt_id = x.attempt_id"
    " WHERE x.terminal_ref = :ref AND x.batch_no = :batch_no AND x.trace_no = :trace_no"
    " FOR UPDATE OF x"
)
_LINKED = text(
    "INSERT INTO pos_transactions (id, terminal_ref, batch_no, trace_no, kind, status, amount,"
    " bill_id, original_id, refund_id, rrn, operator, occurred_at, digest)"
    " VALUES (:id, :ref, :batch_no, :trace_no, :kind, 'ACCEPTED', :amount, :bill_id,"
    " :original_id, :refund_id, :rrn, :operator, :occurred_at, :digest)"
)


def _linked_repeat(row: Any, kind: str, message: t.Message) -> InboundAnswer:
    if row.kind != kind or row.digest != t.digest(message):
        return _no(R.CONFLICTING_REPEAT)
    return _accepted(getattr(message, "batch_no", ""), getattr(message, "trace_no", ""))


async def void(ctx: PaymentContext, terminal: Terminal, msg: t.Void) -> InboundAnswer:
    for _ in range(2):  # a second pass after losing a race to an identical void
        try:
            return await _void_once(ctx, terminal, msg)
        except IntegrityError:
            continue
    return _no(R.SYSTEM_ERROR)


async def _void_once(ctx: PaymentContext, terminal: Terminal, msg: t.Void) -> InboundAnswer:
    codes: list[str] = []
    async with core_transaction(ctx.sessions) as conn:
        await _terminal_enabled(conn, terminal)
        mine = await _by_key(conn, terminal, msg.batch_no, msg.trace_no)
        if mine is not None:
            return _linked_repeat(mine, "VOID", msg)
        key = {"ref": terminal.ref, "batch_no": msg.batch_no, "trace_no": msg.original_trace_no}
        original = (await conn.execute(_ORIGINAL, key)).first()
        if original is None or original.kind != "SALE" or original.attempt_id is None:
            raise _Refused(_no(R.ORIGINAL_NOT_FOUND))
        if original.amount != msg.amount:
            raise _Refused(_no(R.AMOUNT_DIFFERS))
        if original.status != "ACCEPTED":
            raise _Refused(_no(R.NOT_ALLOWED, f"the sale is {original.status.lower()}"))
        if await conn.scalar(_SETTLED, {"ref": terminal.ref, "batch_no": msg.batch_no}):
            raise _Refused(_no(R.NOT_ALLOWED, "batch settled: refund instead"))
        undone = await undo_payment(
            conn,
            attempt_id=original.attempt_id,
            reason="pos void",
            actor=f"pos:{terminal.terminal_id}",
        )
        if undone is None or undone.outcome not in {Undone.UNDONE, Undone.NOT_PAID}:
            raise _Refused(_no(R.NOT_ALLOWED, "the sale can no longer be voided"))
        await conn.execute(_SET_STATUS, {"id": original.id, "status": "VOIDED"})
        await conn.execute(
            _LINKED,
            {
                "id": uuid.uuid4(),
                "ref": terminal.ref,
                "batch_no": msg.batch_no,
                "trace_no": msg.trace_no,
                "kind": "VOID",
                "amount": msg.amount,
                "bill_id": original.bill_id,
                "original_id": original.id,
                "refund_id": None,
                "rrn": msg.rrn,
                "operator": msg.operator,
                "occurred_at": msg.occurred_at,
                "digest": t.digest(msg),
            },
        )
        codes.append(undone.payment_code)
    await _invalidate(ctx, codes)
    return _accepted(msg.batch_no, msg.trace_no)


# ------------------------------------------------------------------ refund


async def refund(ctx: PaymentContext, terminal: Terminal, msg: t.Refund) -> InboundAnswer:
    """退货: the acquirer gave (part of) a settled sale back; record it as a succeeded
    channel refund with every consequence (payments.refunds.complete_refund)."""
    actor = Actor("system", f"pos:{terminal.terminal_id}")
    refund_id = uuid.uuid5(uuid.NAMESPACE_URL, f"pos:{terminal.ref}:{msg.batch_no}:{msg.trace_no}")
    for _ in range(2):
        try:
            async with ctx.sessions() as s, s.begin():
                conn = await s.connection()
                await _terminal_enabled(conn, terminal)
                mine = await _by_key(conn, terminal, msg.batch_no, msg.trace_no)
                if mine is not None:
                    return _linked_repeat(mine, "REFUND", msg)
                key = {
                    "ref": terminal.ref,
                    "batch_no": msg.original_batch_no,
                    "trace_no": msg.original_trace_no,
                }
                original = (await conn.execute(_ORIGINAL, key)).first()
                if original is None or original.kind != "SALE" or original.receipt_id is None:
                    raise _Refused(_no(R.ORIGINAL_NOT_FOUND))
                if original.status != "ACCEPTED":
                    raise _Refused(_no(R.NOT_ALLOWED, f"the sale is {original.status.lower()}"))
                settled = {"ref": terminal.ref, "batch_no": msg.original_batch_no}
                if not await conn.scalar(_SETTLED, settled):
                    raise _Refused(_no(R.NOT_ALLOWED, "batch not settled: void instead"))
                if msg.amount > original.receipt_amount - original.refunded_amount:
                    raise _Refused(_no(R.AMOUNT_DIFFERS, "more than the sale has left"))
                made = await refunds.request_refund(
                    s,
                    receipt_id=original.receipt_id,
                    amount=msg.amount,
                    reason="pos refund (退货)",
                    actor=actor,
                    refund_id=refund_id,
                )
                # The acquirer has sent the money already: nothing for the executor to send.
                await conn.execute(
                    text("DELETE FROM outbox WHERE key = :key AND processed_at IS NULL"),
                    {"key": f"refund.execute:{made.id}"},
                )
                await refunds.mark_processing(s, made.id)
                done = await refunds.complete_refund(
                    s, made.id, succeeded=True, channel_refund_no=msg.rrn, when=msg.occurred_at
                )
                await conn.execute(
                    _LINKED,
                    {
                        "id": uuid.uuid4(),
                        "ref": terminal.ref,
                        "batch_no": msg.batch_no,
                        "trace_no": msg.trace_no,
                        "kind": "REFUND",
                        "amount": msg.amount,
                        "bill_id": original.bill_id,
                        "original_id": original.id,
                        "refund_id": done.id,
                        "rrn": msg.rrn,
                        "operator": msg.operator,
                        "occurred_at": msg.occurred_at,
                        "digest": t.digest(msg),
                    },
                )
                code = await conn.scalar(
                    text("SELECT payment_code FROM bills WHERE id = :id"), {"id": original.bill_id}
                )
            await _invalidate(ctx, [str(code)])
            return _accepted(msg.batch_no, msg.trace_no)
        except IntegrityError:
            continue
    return _no(R.SYSTEM_ERROR)


# ------------------------------------------------------------------ batch settlement


_OURS = text(
    "SELECT x.kind, x.trace_no, x.amount FROM pos_transactions x"  # noqa: S608 - constants only
    " LEFT JOIN payment_attempts a ON a.id = x.attempt_id"
    " WHERE x.terminal_ref = :ref AND x.batch_no = :batch_no AND ("
    # A sale counts once it was approved, voided later or not; a reversed one never happened.
    f" (x.kind = 'SALE' AND ((x.status = 'ACCEPTED' AND a.status = '{AttemptStatus.SUCCEEDED}')"
    " OR x.status = 'VOIDED')) OR (x.kind <> 'SALE' AND x.status = 'ACCEPTED'))"
)
_STORED = text(
    "SELECT status, terminal_totals, our_totals, differences, digest FROM pos_batches"
    " WHERE terminal_ref = :ref AND batch_no = :batch_no"
)
_RECORD = text(
    "INSERT INTO pos_batches (terminal_ref, batch_no, status, terminal_totals, our_totals,"
    " differences, digest) VALUES (:ref, :batch_no, :status, CAST(:theirs AS jsonb),"
    " CAST(:ours AS jsonb), CAST(:differences AS jsonb), :digest)"
)


def _totals_json(totals: Mapping[str, CountTotal]) -> str:
    return json.dumps({k: [v.count, v.amount] for k, v in totals.items()}, sort_keys=True)


def _totals_from(doc: Mapping[str, Any]) -> dict[str, CountTotal]:
    return {k: CountTotal(int(v[0]), int(v[1])) for k, v in doc.items()}


def _report(batch_no: str, status: str, theirs: Any, ours: Any, differences: Any) -> InboundAnswer:
    """OK either way: the batch is settled; a mismatch is `balanced` false (its own code
    on the wire) with the differing transactions."""
    check = BatchCheck(
        batch_no,
        status == "BALANCED",
        _totals_from(ours),
        _totals_from(theirs),
        tuple(differences),
    )
    return InboundAnswer(R.APPROVED, batch=check)


def compare(
    ours: list[tuple[str, str, int]], theirs: t.Settle
) -> tuple[dict[str, CountTotal], list[dict[str, Any]]]:
    """Our totals per kind, and each transaction only one side has or has with another
    amount (in fen; None where a side lacks it)."""
    totals = {kind: CountTotal(0, 0) for kind in t.TOTAL_KINDS}
    mine: dict[tuple[str, str], int] = {}
    for kind, trace_no, amount in ours:
        have = totals[kind]
        totals[kind] = CountTotal(have.count + 1, have.amount + amount)
        mine[kind, trace_no] = amount
    seen: dict[tuple[str, str], int] = {(d.kind, d.trace_no): d.amount for d in theirs.details}
    differences = [
        {
            "kind": kind,
            "trace_no": trace_no,
            "terminal_amount": seen.get((kind, trace_no)),
            "our_amount": mine.get((kind, trace_no)),
        }
        for kind, trace_no in sorted(set(mine) | set(seen))
        if mine.get((kind, trace_no)) != seen.get((kind, trace_no))
    ]
    return totals, differences


async def settle(ctx: PaymentContext, terminal: Terminal, msg: t.Settle) -> InboundAnswer:
    digest = hashlib.sha256(
        (_totals_json(msg.totals) + repr(sorted(msg.details, key=repr))).encode()
    ).hexdigest()
    key = {"ref": terminal.ref, "batch_no": msg.batch_no}
    for _ in range(2):
        try:
            async with core_transaction(ctx.sessions) as conn:
                await _terminal_enabled(conn, terminal)
                stored = (await conn.execute(_STORED, key)).first()
                if stored is not None:
                    if stored.digest != digest:
                        raise _Refused(_no(R.NOT_ALLOWED, "batch settled already"))
                    return _report(
                        msg.batch_no,
                        stored.status,
                        stored.terminal_totals,
                        stored.our_totals,
                        stored.differences,
                    )
                rows = (await conn.execute(_OURS, key)).all()
                ours, differences = compare(
                    [(r.kind, r.trace_no, int(r.amount)) for r in rows], msg
                )
                balanced = not differences and all(ours[k] == msg.totals[k] for k in t.TOTAL_KINDS)
                status = "BALANCED" if balanced else "MISMATCHED"
                await conn.execute(
                    _RECORD,
                    key
                    | {
                        "status": status,
                        "theirs": _totals_json(msg.totals),
                        "ours": _totals_json(ours),
                        "differences": json.dumps(differences),
                        "digest": digest,
                    },
                )
            if not balanced:
                log.warning("pos batch mismatch", batch_no=msg.batch_no, differing=len(differences))
            return _report(
                msg.batch_no,
                status,
                json.loads(_totals_json(msg.totals)),
                json.loads(_totals_json(ours)),
                differences,
            )
        except IntegrityError:
            continue
    return _no(R.SYSTEM_ERROR)
