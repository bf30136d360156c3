"""The kiosk's conversation beyond the bill query (which the seam answers for every
channel): confirmations recorded once per (device, sequence number), store-and-forward
uploads, reprints, heartbeats, the gaps reported to finance.

Decisions (the kiosk protocol is ours; docs/channels/kiosk.md is the device's side):
- A confirmation is recorded once per (device, sequence number) and applied. A live one
  is recorded by one statement shared by the devices confirming meanwhile, which also
  pays the usual one (our open kiosk order, its reference new, the bill simply payable)
  by the confirmation's own writes (payments.confirm) — recorded and paid at once, or
  neither. Anything else, once recorded, is applied by the seam's channel-agnostic
  confirmation (payments.inbound.confirm): with its order id through confirm_payment,
  without one by an attempt opened for the acquirer's reference. The acquirer's
  reference is the channel trade number, so a charge pays at most once whatever sequence
  number carries it. A bill paid meanwhile elsewhere → a DUPLICATE receipt and a refund
  through the acquirer.
- A repeat of a recorded sequence number with the same facts is applied again (which
  answers the recorded outcome, and heals a crash between recording and applying); with
  other facts it is a DUPLICATE and changes nothing.
- Gaps: a number above the device's highest opens gaps for the numbers skipped (a
  heartbeat's `last_seq` does the same for numbers the device has but has not sent); a
  number arriving closes its gap. Open gaps are reported to finance (`open_gaps`).
- The answer to a live confirmation carries the slip the kiosk prints (kiosks.slip).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.states import BillStatus
from channels.base import ConfirmationReceipt, Disposition, InboundAnswer, Outcome, PayMode
from channels.kiosk import transforms as t
from channels.kiosk.adapter import NAME as CHANNEL
from channels.kiosk.inbound import Heartbeat, KioskAnswer, KioskConfirm, KioskUpload, Reprint
from kernel.clock import business_date
from kernel.group_commit import GroupCommit
from kiosks.slip import SlipFacts, slip, slip_of
from payments import inbound
from payments.confirm import (
    CAN_SUCCEED,
    PAY_CTES,
    ConfirmOutcome,
    ConfirmResult,
    DriverStatement,
    Paying,
    after_commit,
    payment_item,
)
from payments.context import PaymentContext
from payments.states import AttemptStatus

__all__ = [
    "RECORD_GROUPS",
    "GapRange",
    "Recorded",
    "confirm",
    "heartbeat",
    "install",
    "missing_ranges",
    "open_gaps",
    "reprint",
    "upload",
]

log = structlog.get_logger(__name__)


def install() -> None:
    """Answer the kiosk's own requests through the seam (called once at start-up)."""
    inbound.register_handler(KioskConfirm, confirm)
    inbound.register_handler(KioskUpload, upload)
    inbound.register_handler(Reprint, reprint)
    inbound.register_handler(Heartbeat, heartbeat)


def _engine(ctx: PaymentContext) -> AsyncEngine:
    return cast(AsyncEngine, ctx.sessions.kw["bind"])


def _device(sent: inbound.Sent) -> str:
    assert sent.sender is not None, "the kiosk adapter names the device"
    return sent.sender


# ------------------------------------------------------------------ confirm and upload


def _recording(columns: str) -> str:
    """The CTEs that record confirmations (`i`: one record per confirmation, of these
    columns), of one device or several: each new sequence number once, the gaps it opens
    and closes, each device's highest number."""
    return (
        "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb))"  # noqa: S608 - constants only
        f" AS i({columns})),"
        " top AS (SELECT device, max(seq) AS top FROM i GROUP BY device),"
        # Each device's row, locked in id order (as every batch locks them: no deadlock
        # between batches): its writes below are serialised with any other batch's.
        " dev AS (SELECT d.id AS device, d.last_seq, d.enabled, top.top FROM kiosk_devices AS d"
        " JOIN top ON top.device = d.id ORDER BY d.id FOR UPDATE OF d),"
        # The devices whose numbers are recorded: enabled (a disable is seen here at once,
        # in every process, whatever a key cache holds), and not jumping too far past the
        # highest number (a broken counter). For the others nothing below writes.
        " ok AS (SELECT * FROM dev WHERE enabled AND top <= last_seq + CAST(:jump AS bigint)),"
        # Returned: a new number, or one recorded already with the same facts; a number
        # recorded with other facts is not. ON CONFLICT judges the latest committed row
        # (the statement's snapshot may predate a concurrent record of the same number).
        " ins AS (INSERT INTO kiosk_confirmations AS c (device_id, seq, order_id,"
        " payment_code, amount, paid_at, acquirer_ref, method, digest, uploaded)"
        " SELECT i.device, seq, order_id, payment_code, amount, paid_at, acquirer_ref, method,"
        " decode(digest, 'hex'), uploaded FROM i JOIN ok ON ok.device = i.device"
        " ON CONFLICT (device_id, seq) DO UPDATE SET uploaded = c.uploaded"
        " WHERE c.digest = excluded.digest RETURNING c.device_id, c.seq),"
        # The numbers skipped above the highest are gaps.
        " gaps AS (INSERT INTO kiosk_gaps (device_id, seq)"
        " SELECT ok.device, g FROM ok, generate_series(ok.last_seq + 1, ok.top - 1) AS g"
        " WHERE NOT EXISTS (SELECT 1 FROM i WHERE i.device = ok.device AND i.seq = g)"
        " AND NOT EXISTS (SELECT 1 FROM kiosk_confirmations AS c WHERE c.device_id = ok.device"
        " AND c.seq = g) ON CONFLICT DO NOTHING RETURNING seq),"
        " up AS (UPDATE kiosk_devices AS d SET last_seq = ok.top FROM ok"
        " WHERE d.id = ok.device AND d.last_seq < ok.top RETURNING d.id),"
        # A number arriving closes its gap. The ANY(ARRAY(...)) lets the planner reach
        # the gaps through the open-gaps index of these devices: a join with the recordset
        # alone (estimated at 100 rows whatever it holds) scanned every gap ever recorded,
        # closed ones included, in each confirmation — slower as the table grew.
        " closed AS (UPDATE kiosk_gaps AS k SET closed_at = now() FROM i JOIN ok"
        " ON ok.device = i.device WHERE k.device_id = ANY(ARRAY(SELECT device FROM ok))"
        " AND k.device_id = i.device AND k.seq = i.seq"
        " AND k.closed_at IS NULL RETURNING k.seq)"
    )


_COLUMNS = (
    "device varchar, seq bigint, order_id uuid, payment_code varchar, amount bigint,"
    " paid_at timestamptz, acquirer_ref varchar, method varchar, digest text, uploaded boolean"
)
_PAYMENT_COLUMNS = (
    ", attempt_id uuid, channel varchar, trade_no varchar, pay_mode varchar,"
    " paid_at_text text, receipt_id uuid, business_date date, actor varchar,"
    " request_id varchar, memo text, debit_code text, credit_code text"
)


def _answer_rows(paid: str) -> str:
    """One row per confirmation: what recording it found, whether it was paid (`paid`),
    and its order's bill as the slip prints it."""
    return (
        " SELECT i.device, i.seq, coalesce(dev.enabled, false) AS enabled,"  # noqa: S608 - constants only
        " ok.device IS NOT NULL AS accepted, ins.seq IS NOT NULL AS agrees,"
        f" {paid} AS paid, a.bill_id, b.principal_amount, b.payer_name_enc,"
        " ag.name AS agency_name"
        " FROM i LEFT JOIN dev ON dev.device = i.device LEFT JOIN ok ON ok.device = i.device"
        " LEFT JOIN ins ON ins.device_id = i.device AND ins.seq = i.seq"
        " LEFT JOIN payment_attempts AS a ON a.id = i.order_id"
        " LEFT JOIN bills AS b ON b.id = a.bill_id LEFT JOIN agencies AS ag ON ag.id = b.agency_id"
    )


_RECORD = DriverStatement.of(_recording(_COLUMNS) + _answer_rows("false"))
"""Record confirmations (an upload): ONE statement in its own implicit transaction, on
the driver connection."""

_PAY_USUAL = (
    # lk: the usual confirmation, recorded now (or again with the same facts: a repeat
    # after a crash between the two heals here) — our open kiosk order of this bill and
    # amount, its reference new, the bill ISSUED and before its expiry, the ledger's
    # accounts there — its bill and attempt rows locked (bills in id order, as every path
    # locks them) with those guards held on the locked rows. It is paid below by the
    # confirmation's own writes (payments.confirm PAY_CTES); any other takes the seam's
    # general path once this statement has recorded it.
    ", lk AS (SELECT i.*, b.agency_id, b.agency_bill_no, b.principal_amount,"  # noqa: S608 - constants only
    " b.id AS paid_bill, i.trade_no AS final_trade_no,"
    " greatest(0, i.amount - b.principal_amount) AS late_fee"
    " FROM i JOIN ins ON ins.device_id = i.device AND ins.seq = i.seq"
    " JOIN payment_attempts AS a ON a.id = i.order_id JOIN bills AS b ON b.id = a.bill_id"
    " WHERE a.channel = i.channel AND a.status = ANY(CAST(:statuses AS varchar[]))"
    " AND a.amount = i.amount AND a.channel_trade_no IS NULL"
    f" AND b.payment_code = i.payment_code AND b.status = '{BillStatus.ISSUED}'"
    " AND i.paid_at <= b.expires_at"
    " AND NOT EXISTS (SELECT 1 FROM payment_attempts AS r WHERE r.channel = i.channel"
    " AND r.channel_trade_no = i.trade_no)"
    " AND (SELECT count(*) FROM ledger_accounts WHERE code IN (i.debit_code, i.credit_code)) = 2"
    " ORDER BY b.id FOR UPDATE OF b, a),"
    f" att AS (UPDATE payment_attempts AS a SET status = '{AttemptStatus.SUCCEEDED}',"
    " channel_trade_no = lk.final_trade_no, updated_at = now()"
    " FROM lk WHERE a.id = lk.attempt_id RETURNING a.id),"
)
_RECORD_AND_PAY = DriverStatement.of(
    "".join(
        (
            _recording(_COLUMNS + _PAYMENT_COLUMNS),
            _PAY_USUAL,
            PAY_CTES,
            _answer_rows("EXISTS (SELECT 1 FROM lk WHERE lk.device = i.device AND lk.seq = i.seq)"),
        )
    )
)
"""Record live confirmations, of the devices confirming meanwhile (RECORD_GROUPS), and pay
the usual ones: ONE statement in its own implicit transaction, on the driver connection,
as payments.confirm's `_OPEN_AND_APPLY` is for a bank."""

_LOCK_DEVICE = text("SELECT last_seq FROM kiosk_devices WHERE id = :device FOR UPDATE")


class Recorded(NamedTuple):
    """What recording one confirmation found."""

    enabled: bool
    """The device is registered and enabled (else nothing was recorded)."""
    accepted: bool
    """Recorded, or known already: enabled, and not too far past the highest number."""
    agrees: bool
    """New, or recorded before with the same facts."""
    paid: bool
    """Paid by the statement that recorded it (the usual live confirmation)."""
    bill_id: uuid.UUID | None
    principal: int | None
    payer_name_enc: bytes | None
    agency_name: str | None


def _item(device_id: str, c: KioskConfirm, *, uploaded: bool) -> dict[str, Any]:
    return {
        "device": device_id,
        "seq": c.sequence,
        "order_id": c.order_id,
        "payment_code": c.payment_code,
        "amount": c.amount,
        "paid_at": c.paid_at.isoformat(),
        "acquirer_ref": c.reference,
        "method": c.method,
        "digest": c.digest.hex(),
        "uploaded": uploaded,
    }


async def _record_items(
    engine: AsyncEngine, items: list[dict[str, Any]], *, pay: bool = False
) -> list[Recorded]:
    """`_RECORD` (`_RECORD_AND_PAY` to pay the usual ones: items with payment_item's
    columns) for these items, distinct (device, seq) each; one result per item."""
    params: dict[str, Any] = {"items": json.dumps(items), "jump": t.MAX_SEQ_JUMP}
    statement = _RECORD
    if pay:
        statement, params["statuses"] = _RECORD_AND_PAY, CAN_SUCCEED
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await statement.fetch(driver, params)
    by_key = {
        (r["device"], r["seq"]): Recorded(
            r["enabled"],
            r["accepted"],
            r["agrees"],
            r["paid"],
            r["bill_id"],
            r["principal_amount"],
            r["payer_name_enc"],
            r["agency_name"],
        )
        for r in rows
    }
    return [by_key[item["device"], item["seq"]] for item in items]


async def _record_batch(batch: list[tuple[AsyncEngine, dict[str, Any]]]) -> list[Recorded]:
    """One `_RECORD_AND_PAY` per engine of the batch (one, outside tests). A batch that
    fails as a whole (one bad item, two payments of one bill, a deadlock) wrote nothing and
    is retried item by item: each caller gets its own result or its own error."""
    out: dict[int, Recorded] = {}
    for engine in {id(e): e for e, _ in batch}.values():
        mine = [(n, item) for n, (e, item) in enumerate(batch) if e is engine]
        try:
            found = await _record_items(engine, [item for _, item in mine], pay=True)
        except asyncpg.PostgresError:
            if len(mine) == 1:
                raise
            found = [(await _record_items(engine, [item], pay=True))[0] for _, item in mine]
        out |= {n: r for (n, _), r in zip(mine, found, strict=True)}
    return [out[n] for n in range(len(batch))]


RECORD_GROUPS: GroupCommit[tuple[AsyncEngine, dict[str, Any]], Recorded] = GroupCommit(
    _record_batch,
    lanes=4,
    max_batch=32,
    key=lambda item: (id(item[0]), item[1]["device"], item[1]["seq"]),
)
"""Live confirmations recorded (and the usual ones paid) together: one statement and one
commit for the devices that confirm meanwhile, as kernel.group_commit groups payments."""


_JUMP = InboundAnswer(Outcome.BAD_REQUEST, "sequence number jumps too far")
_USED = InboundAnswer(Outcome.DUPLICATE, "sequence number recorded with other facts")


_DISABLED = InboundAnswer(Outcome.UNKNOWN_SENDER, "device disabled")


async def confirm(
    ctx: PaymentContext, sent: inbound.Sent, request: KioskConfirm, now: datetime
) -> InboundAnswer:
    """A live confirmation: recorded, applied, answered with the slip to print.

    The usual one — our open order, its reference new, the bill simply payable — is paid by
    the statement that records it, and its slip made from the facts in hand. Anything
    else is answered by the seam's confirmation once recorded, which reads afresh."""
    device = _device(sent)
    paying = _paying(ctx, sent, request) if request.order_id else None
    item = _item(device, request, uploaded=False)
    if paying is not None:
        item |= payment_item(paying)
    found = await RECORD_GROUPS.submit((_engine(ctx), item))
    if not found.enabled:
        return _DISABLED
    if not found.accepted:
        return _JUMP
    if not found.agrees:
        log.warning("kiosk sequence number reused", device_id=device, seq=request.sequence)
        return _USED
    if found.paid and paying is not None:
        return await _paid(ctx, sent, request, found, paying)
    answer = await inbound.confirm(ctx, sent, request, now)
    receipt = answer.receipt
    if answer.outcome != Outcome.OK or receipt is None or receipt.receipt_id is None:
        return answer
    printed = await slip(
        _engine(ctx),
        uuid.UUID(receipt.receipt_id),
        public_url=ctx.public_url,
        device_id=device,
        seq=request.sequence or 0,
        method=request.method,
        card=request.card,
    )
    return KioskAnswer(answer.outcome, answer.detail, receipt=receipt, slip=printed)


def _paying(ctx: PaymentContext, sent: inbound.Sent, request: KioskConfirm) -> Paying:
    """The payment of the order, as payments.inbound confirms an order of ours."""
    assert request.order_id is not None
    return Paying(
        attempt_id=uuid.UUID(request.order_id),
        bill_id=None,
        channel=sent.channel,
        channel_trade_no=request.reference,
        amount=request.amount,
        paid_at=request.paid_at,
        business_date=business_date(request.paid_at, ctx.cutoff),
        source=f"confirm:{sent.channel}",
        pay_mode=request.pay_mode or PayMode.for_channel(sent.channel),
    )


async def _paid(
    ctx: PaymentContext,
    sent: inbound.Sent,
    request: KioskConfirm,
    found: Recorded,
    paying: Paying,
) -> KioskAnswer:
    """The answer to a confirmation the recording statement paid."""
    assert found.bill_id is not None
    assert found.principal is not None
    assert found.payer_name_enc is not None
    result = ConfirmResult(
        ConfirmOutcome.APPLIED,
        paying.attempt_id,
        found.bill_id,
        paying.receipt_id,
        receipt_kind="PAYMENT",
    )
    await after_commit(ctx.redis, result, request.payment_code, paying.source)
    # The receipt was written by that statement with these facts (the late fee is what
    # the amount holds above the principal, as payments.confirm writes it); its e-note is
    # not issued yet, so the slip links to the payer's page.
    facts = SlipFacts(
        receipt_id=paying.receipt_id,
        kind="PAYMENT",
        amount=request.amount,
        late_fee_amount=max(0, request.amount - found.principal),
        paid_at=request.paid_at,
        channel_trade_no=request.reference,
        payment_code=request.payment_code,
        bill_id=found.bill_id,
        payer_name_enc=found.payer_name_enc,
        agency_name=found.agency_name or "",
    )
    printed = slip_of(
        facts,
        public_url=ctx.public_url,
        device_id=_device(sent),
        seq=request.sequence or 0,
        method=request.method,
        card=request.card,
    )
    receipt = ConfirmationReceipt(
        order_id=str(paying.attempt_id),
        reference=request.reference,
        receipt_id=str(paying.receipt_id),
        disposition=Disposition.PAID,
        sequence=request.sequence,
    )
    return KioskAnswer(Outcome.OK, receipt=receipt, slip=printed)


async def upload(
    ctx: PaymentContext, sent: inbound.Sent, request: KioskUpload, now: datetime
) -> InboundAnswer:
    """Stored confirmations: each recorded once and applied by the same rules as a live
    one, in any order and as often as they come; answered one by one, in the order sent,
    with the numbers still missing."""
    device = _device(sent)
    if not request.items or len(request.items) > t.MAX_UPLOAD:
        return InboundAnswer(Outcome.BAD_REQUEST, f"an upload holds 1 to {t.MAX_UPLOAD} items")
    first: dict[int, KioskConfirm] = {}
    for c in request.items:  # the same number twice in one upload: the first copy counts
        first.setdefault(c.sequence or 0, c)
    firsts = list(first.values())
    found = await _record_items(_engine(ctx), [_item(device, c, uploaded=True) for c in firsts])
    if not found[0].enabled:
        return _DISABLED
    if not found[0].accepted:
        return _JUMP
    to_apply = [c for c, r in zip(firsts, found, strict=True) if r.agrees]
    # Concurrently: the confirmations of different bills share grouped statements.
    applied = await asyncio.gather(*(inbound.confirm(ctx, sent, c, now) for c in to_apply))
    by_seq = {c.sequence: a for c, a in zip(to_apply, applied, strict=True)}
    answers = []
    for c in request.items:
        seq = c.sequence or 0
        same_copy = c.digest == first[seq].digest
        answers.append(by_seq[seq] if same_copy and seq in by_seq else _USED)
    items = tuple(answers)
    missing = await missing_ranges(ctx, device)
    return KioskAnswer(Outcome.OK, items=items, missing=missing)


# ------------------------------------------------------------------ reprint, heartbeat, gaps

_RECEIPT_OF_SEQ = text(
    "SELECT k.method, r.id AS receipt_id FROM kiosk_confirmations AS k"
    " JOIN receipts AS r ON r.channel = :channel AND r.channel_trade_no = k.acquirer_ref"
    " WHERE k.device_id = :device AND k.seq = :seq"
)


async def reprint(
    ctx: PaymentContext, sent: inbound.Sent, request: Reprint, now: datetime
) -> InboundAnswer:
    """The slip of a past confirmation of this device (补打), marked as a reprint."""
    del now
    device = _device(sent)
    async with _engine(ctx).connect() as conn:
        row = (
            await conn.execute(
                _RECEIPT_OF_SEQ, {"channel": CHANNEL, "device": device, "seq": request.sequence}
            )
        ).first()
    printed = None
    if row is not None:
        printed = await slip(
            _engine(ctx),
            row.receipt_id,
            public_url=ctx.public_url,
            device_id=device,
            seq=request.sequence,
            method=row.method,
            reprint=True,
        )
    if printed is None:
        return InboundAnswer(Outcome.NOT_CONFIRMED, "no receipt for this sequence number")
    return KioskAnswer(Outcome.OK, slip=printed)


_HEARTBEAT = text(
    "WITH dev AS (SELECT last_seq FROM kiosk_devices WHERE id = :device),"
    " gaps AS (INSERT INTO kiosk_gaps (device_id, seq)"
    " SELECT :device, g FROM dev,"
    " generate_series(dev.last_seq + 1, CAST(:announced AS bigint)) AS g"
    " ON CONFLICT DO NOTHING RETURNING seq)"
    " UPDATE kiosk_devices SET last_heartbeat_at = :now,"
    " last_seq = greatest(last_seq, CAST(:announced AS bigint)) WHERE id = :device"
)


async def heartbeat(
    ctx: PaymentContext, sent: inbound.Sent, request: Heartbeat, now: datetime
) -> InboundAnswer:
    """The device is alive; numbers it announces but has not sent are gaps. Answered with
    the gaps still open, as ranges (what the device should upload)."""
    device = _device(sent)
    async with _engine(ctx).begin() as conn:
        last = int((await conn.execute(_LOCK_DEVICE, {"device": device})).scalar_one())
        if request.last_sequence > last + t.MAX_SEQ_JUMP:
            return _JUMP
        await conn.execute(
            _HEARTBEAT, {"device": device, "announced": request.last_sequence, "now": now}
        )
    missing = await missing_ranges(ctx, device)
    return KioskAnswer(Outcome.OK, missing=missing, server_time=now)


_OPEN_GAPS = text(
    "SELECT device_id, min(seq) AS first, max(seq) AS last, count(*) AS n,"
    " min(detected_at) AS since FROM (SELECT device_id, seq, detected_at,"
    " seq - row_number() OVER (PARTITION BY device_id ORDER BY seq) AS island"
    " FROM kiosk_gaps AS k WHERE closed_at IS NULL AND (CAST(:device AS varchar) IS NULL"
    " OR device_id = :device) AND NOT EXISTS (SELECT 1 FROM kiosk_confirmations AS c"
    " WHERE c.device_id = k.device_id AND c.seq = k.seq)) AS g"
    " GROUP BY device_id, island ORDER BY device_id, first"
)


@dataclass(frozen=True, slots=True)
class GapRange:
    device_id: str
    first: int
    last: int
    count: int
    since: datetime


async def open_gaps(ctx: PaymentContext, device_id: str | None = None) -> list[GapRange]:
    """Sequence numbers not received, as ranges per device (the finance report)."""
    async with ctx.sessions.kw["bind"].connect() as conn:
        rows = await conn.execute(_OPEN_GAPS, {"device": device_id})
        return [GapRange(r.device_id, r.first, r.last, r.n, r.since) for r in rows]


async def missing_ranges(ctx: PaymentContext, device_id: str) -> tuple[tuple[int, int], ...]:
    return tuple((g.first, g.last) for g in await open_gaps(ctx, device_id))
