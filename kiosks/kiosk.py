"""The kiosk's conversation beyond the bill query (which the seam answers for every
channel): confirmations recorded once per (device, sequence number), store-and-forward
uploads, reprints, heartbeats, the gaps reported to finance.

Decisions (the kiosk protocol is ours; docs/channels/kiosk.md is the device's side):
- A confirmation is recorded once per (device, sequence number) — `record` — and then
  applied by the seam's channel-agnostic confirmation (payments.inbound.confirm): with its
  order id through confirm_payment (the grouped one-statement path when the bill is simply
  payable), without one by an attempt opened for the acquirer's reference. The acquirer's
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.base import InboundAnswer, Outcome
from channels.kiosk import transforms as t
from channels.kiosk.adapter import NAME as CHANNEL
from channels.kiosk.inbound import Heartbeat, KioskAnswer, KioskConfirm, KioskUpload, Reprint
from kiosks.slip import slip
from payments import inbound
from payments.confirm import DriverStatement
from payments.context import PaymentContext

__all__ = [
    "GapRange",
    "confirm",
    "heartbeat",
    "install",
    "missing_ranges",
    "open_gaps",
    "record",
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

_RECORD = DriverStatement.of(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(seq bigint,"
    " order_id uuid, payment_code varchar, amount bigint, paid_at timestamptz,"
    " acquirer_ref varchar, method varchar, digest text)),"
    " top AS (SELECT max(seq) AS top FROM i),"
    # The device's highest number as this statement sees it; no row when the batch jumps
    # too far past it (a broken counter): then nothing below writes.
    " dev AS (SELECT last_seq FROM kiosk_devices, top WHERE id = CAST(:device AS varchar)"
    " AND top.top <= last_seq + CAST(:jump AS bigint)),"
    " ins AS (INSERT INTO kiosk_confirmations (device_id, seq, order_id, payment_code, amount,"
    " paid_at, acquirer_ref, method, digest, uploaded)"
    " SELECT CAST(:device AS varchar), seq, order_id, payment_code, amount, paid_at,"
    " acquirer_ref, method, decode(digest, 'hex'), CAST(:uploaded AS boolean) FROM i, dev"
    " ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq),"
    # The numbers skipped above the highest are gaps. A concurrent batch of the same device
    # may make this statement's highest stale: that only adds gap rows for numbers already
    # received, which the report leaves out (open_gaps) — never misses a gap.
    " gaps AS (INSERT INTO kiosk_gaps (device_id, seq)"
    " SELECT CAST(:device AS varchar), g FROM dev, top,"
    " generate_series(dev.last_seq + 1, top.top - 1) AS g"
    " WHERE g NOT IN (SELECT seq FROM i) AND NOT EXISTS (SELECT 1 FROM kiosk_confirmations"
    " AS c WHERE c.device_id = CAST(:device AS varchar) AND c.seq = g)"
    " ON CONFLICT DO NOTHING RETURNING seq),"
    " up AS (UPDATE kiosk_devices AS d SET last_seq = top.top FROM top, dev"
    " WHERE d.id = CAST(:device AS varchar) AND d.last_seq < top.top RETURNING d.id),"
    " closed AS (UPDATE kiosk_gaps AS k SET closed_at = now() FROM i, dev"
    " WHERE k.device_id = CAST(:device AS varchar) AND k.seq = i.seq AND k.closed_at IS NULL"
    " RETURNING k.seq)"
    " SELECT i.seq, EXISTS (SELECT 1 FROM dev) AS accepted, ins.seq IS NOT NULL AS fresh,"
    " coalesce(encode(k.digest, 'hex') = i.digest, true) AS same"
    " FROM i LEFT JOIN ins ON ins.seq = i.seq LEFT JOIN kiosk_confirmations AS k"
    " ON k.device_id = CAST(:device AS varchar) AND k.seq = i.seq"
)
"""Record a batch of one device's confirmations: each new sequence number once, the gaps
it opens and closes, the device's highest number. ONE statement in its own implicit
transaction, on the driver connection (`kiosk_devices`' row is locked only by the UPDATE
of the highest number, for the statement's length)."""

_LOCK_DEVICE = text("SELECT last_seq FROM kiosk_devices WHERE id = :device FOR UPDATE")


async def record(
    engine: AsyncEngine, device_id: str, items: Sequence[KioskConfirm], *, uploaded: bool
) -> dict[int, bool] | None:
    """Record the confirmations: sequence → whether it agrees with what is recorded for it
    (new, or the same facts again). None when the numbers jump too far past the device's
    highest (nothing recorded)."""
    payload = [
        {
            "seq": c.sequence,
            "order_id": c.order_id,
            "payment_code": c.payment_code,
            "amount": c.amount,
            "paid_at": c.paid_at.isoformat(),
            "acquirer_ref": c.reference,
            "method": c.method,
            "digest": c.digest.hex(),
        }
        for c in items
    ]
    params = {
        "items": json.dumps(payload),
        "device": device_id,
        "uploaded": uploaded,
        "jump": t.MAX_SEQ_JUMP,
    }
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await _RECORD.fetch(driver, params)
    if not rows or not rows[0]["accepted"]:
        return None
    return {r["seq"]: bool(r["fresh"] or r["same"]) for r in rows}


_JUMP = InboundAnswer(Outcome.BAD_REQUEST, "sequence number jumps too far")
_USED = InboundAnswer(Outcome.DUPLICATE, "sequence number recorded with other facts")


async def confirm(
    ctx: PaymentContext, sent: inbound.Sent, request: KioskConfirm, now: datetime
) -> InboundAnswer:
    """A live confirmation: recorded, applied, answered with the slip to print."""
    device = _device(sent)
    agrees = await record(_engine(ctx), device, [request], uploaded=False)
    if agrees is None:
        return _JUMP
    if not agrees[request.sequence or 0]:
        log.warning("kiosk sequence number reused", device_id=device, seq=request.sequence)
        return _USED
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
    agrees = await record(_engine(ctx), device, list(first.values()), uploaded=True)
    if agrees is None:
        return _JUMP
    to_apply = [c for c in first.values() if agrees[c.sequence or 0]]
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
