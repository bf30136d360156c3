"""The kiosk's conversation with us: authenticate the device, then query, confirm, upload
stored confirmations, reprint, heartbeat.

Decisions (the kiosk protocol is ours; docs/channels/kiosk.md is the device's side):
- Authentication order: the envelope's device id must name a registered device (else
  UNKNOWN_DEVICE, answered unsigned), its signature must hold (else BAD_SIGNATURE), the
  device must be enabled (else DEVICE_DISABLED), the timestamp inside its window and the
  nonce fresh (else REPLAYED). Nothing is written before all of them pass; the nonce is
  remembered only for a verified message.
- A query opens (or reuses) a PENDING attempt on `kiosk` for today's amount due; its id is
  the order id the kiosk passes to its acquirer and echoes in the confirmation.
- A confirmation is recorded once per (device, sequence number) — `record` — and then
  applied by `payments.confirm` like any other channel's: with its order id by
  confirm_payment (the grouped one-statement path when the bill is simply payable), without
  one (or when the order cannot take it: another charge already paid it) by an attempt
  opened for the acquirer's reference. The acquirer's reference is the channel trade
  number, so a charge pays at most once whatever sequence number carries it. A bill paid
  meanwhile elsewhere → a DUPLICATE receipt and a refund through the acquirer.
- A repeat of a recorded sequence number with the same facts is applied again (which
  answers the recorded outcome, and heals a crash between recording and applying); with
  other facts it is a CONFLICT and changes nothing.
- Gaps: a number above the device's highest opens gaps for the numbers skipped (a
  heartbeat's `last_seq` does the same for numbers the device has but has not sent); a
  number arriving closes its gap. Open gaps are reported to finance (`open_gaps`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import payer as bills
from billing.models import Bill
from billing.payment_code import LENGTH, is_valid
from billing.states import BillStatus
from channels.base import InvalidNotification, PayMode
from channels.kiosk import transforms as t
from channels.kiosk.adapter import NAME as CHANNEL
from channels.kiosk.adapter import KioskAdapter
from kernel import crypto, nonces
from kernel.clock import shanghai_today
from payments.confirm import (
    BILL_COLUMNS,
    AttemptFacts,
    ConfirmOutcome,
    ConfirmResult,
    after_commit,
    apply_confirmation,
    apply_to_locked,
    bill_facts,
    confirm_payment,
    core_transaction,
)
from payments.context import PaymentContext
from payments.models import PaymentAttempt
from payments.states import AttemptStatus
from terminals.models import KioskDevice
from terminals.slip import slip

__all__ = [
    "Device",
    "GapRange",
    "confirm",
    "handle",
    "heartbeat",
    "missing_ranges",
    "open_gaps",
    "query",
    "record",
    "reprint",
]

log = structlog.get_logger(__name__)

SOURCE = f"confirm:{CHANNEL}"
MODE = "kiosk"
NONCE_TTL_S = 2 * t.MAX_SKEW_S + 60
REUSE_MARGIN = timedelta(minutes=5)

_D = cast(Table, KioskDevice.__table__)
_A = cast(Table, PaymentAttempt.__table__)
_B = cast(Table, Bill.__table__)

_DEVICE = select(_D.c.id, _D.c.enabled, _D.c.sign_alg, _D.c.secret_enc, _D.c.public_key).where(
    _D.c.id == bindparam("p_device")
)


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    key: t.DeviceKey


# ------------------------------------------------------------------ the entry point


async def handle(
    ctx: PaymentContext,
    adapter: KioskAdapter,
    operation: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """One kiosk message in, the signed answer out (always HTTP 200 with a result code)."""
    now = now or datetime.now(UTC)
    try:
        env = adapter.envelope(headers)
    except InvalidNotification as exc:
        log.warning("kiosk message without a usable envelope", reason=exc.code)
        return adapter.render(operation, "", None, t.Answer(t.Outcome.BAD_SIGNATURE))
    bound = log.bind(device_id=env.device_id, op=operation)
    async with ctx.sessions() as s:
        row = (await s.execute(_DEVICE, {"p_device": env.device_id})).first()
    if row is None:
        bound.warning("kiosk message from an unknown device")
        return adapter.render(operation, env.device_id, None, t.Answer(t.Outcome.UNKNOWN_DEVICE))
    key = _key(row)
    outcome: t.Outcome | None = None
    if operation not in t.OPERATIONS:
        outcome = t.Outcome.BAD_REQUEST
    elif not adapter.verify(key, operation, env, body):
        outcome = t.Outcome.BAD_SIGNATURE
    elif not row.enabled:
        outcome = t.Outcome.DEVICE_DISABLED
    elif not t.within_window(env, now.timestamp()) or not await _nonce_fresh(
        ctx, env.device_id, env.nonce
    ):
        outcome = t.Outcome.REPLAYED
    if outcome is not None:
        bound.warning("kiosk message refused", outcome=outcome)
        return adapter.render(operation, env.device_id, key, t.Answer(outcome))
    try:
        message = adapter.parse(operation, body)
    except t.BadMessage as exc:
        bound.info("kiosk message malformed", error=str(exc)[:200])
        return adapter.render(operation, env.device_id, key, t.Answer(t.Outcome.BAD_REQUEST))
    device = Device(env.device_id, key)
    answer = await _dispatch(ctx, device, message, now)
    return adapter.render(operation, env.device_id, key, answer)


def _key(row: Any) -> t.DeviceKey:
    if row.sign_alg == "HMAC":
        aad = b"kiosk_devices.secret_enc:" + row.id.encode()
        return t.DeviceKey("HMAC", secret=crypto.decrypt(row.secret_enc, aad=aad))
    return t.DeviceKey("SM2", public_pem=row.public_key)


async def _nonce_fresh(ctx: PaymentContext, device_id: str, nonce: str) -> bool:
    """First use of the nonce (the one nonce store: Redis, PostgreSQL while it is down)."""
    return await nonces.first_use(ctx.redis, ctx.sessions, f"kiosk:{device_id}", nonce, NONCE_TTL_S)


async def _dispatch(  # noqa: PLR0911 - one answer per operation and refusal
    ctx: PaymentContext, device: Device, message: t.Message, now: datetime
) -> t.Answer:
    if isinstance(message, t.Query):
        return await query(ctx, message.payment_code, now=now)
    if isinstance(message, t.Confirm):
        results = await confirm(ctx, device, [message], uploaded=False, now=now)
        if results is None:
            return t.Answer(t.Outcome.BAD_REQUEST)
        return t.Answer(t.Outcome.OK, results[0])
    if isinstance(message, t.Upload):
        results = await confirm(ctx, device, list(message.confirmations), uploaded=True, now=now)
        if results is None:
            return t.Answer(t.Outcome.BAD_REQUEST)
        missing = await missing_ranges(ctx, device.id)
        return t.Answer(t.Outcome.OK, t.UploadAnswer(tuple(results), missing))
    if isinstance(message, t.Reprint):
        found = await reprint(ctx, device.id, message.seq)
        return t.Answer(t.Outcome.OK, found) if found else t.Answer(t.Outcome.UNKNOWN_SEQ)
    still_missing = await heartbeat(ctx, device.id, message.last_seq, now=now)
    if still_missing is None:
        return t.Answer(t.Outcome.BAD_REQUEST)
    return t.Answer(t.Outcome.OK, t.HeartbeatAnswer(now, still_missing))


# ------------------------------------------------------------------ query

_REFUSALS = {
    "bill_cancelled": t.Outcome.CANCELLED,
    "bill_expired": t.Outcome.PAST_DEADLINE,
    "bill_past_deadline": t.Outcome.PAST_DEADLINE,
}


def _code_problem(code: str) -> t.Outcome | None:
    if len(code) != LENGTH or not code.isdigit():
        return t.Outcome.UNKNOWN_CODE
    if not is_valid(code):
        return t.Outcome.CHECK_FAILED
    return None


async def query(ctx: PaymentContext, payment_code: str, *, now: datetime) -> t.Answer:
    """The bill and today's amount due, with an order id for the acquirer."""
    problem = _code_problem(payment_code)
    if problem is not None:
        return t.Answer(problem)
    async with ctx.sessions() as s, s.begin():
        view = await bills.load_view(s, payment_code=payment_code)
        if view is None:
            return t.Answer(t.Outcome.UNKNOWN_CODE)
        refused = bills.refusal(view, now)
        if refused is not None:
            return t.Answer(_REFUSALS.get(refused[0], t.Outcome.ALREADY_PAID))
        due = bills.due_on(view, shanghai_today(now), ctx.day_count)
        attempt = await s.scalar(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.bill_id == view.bill_id,
                PaymentAttempt.channel == CHANNEL,
                PaymentAttempt.status == AttemptStatus.PENDING,
                PaymentAttempt.amount == due.total,
                PaymentAttempt.channel_trade_no.is_(None),
                PaymentAttempt.expires_at > now + REUSE_MARGIN,
            )
            .order_by(PaymentAttempt.created_at.desc())
            .limit(1)
        )
        if attempt is None:
            # Nothing to call: the kiosk charges through its acquirer, so it starts PENDING.
            expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
            attempt = PaymentAttempt(
                id=uuid.uuid4(),
                bill_id=view.bill_id,
                channel=CHANNEL,
                mode=MODE,
                status=AttemptStatus.PENDING,
                amount=due.total,
                expires_at=expires_at,
                next_check_at=min(now + timedelta(seconds=ctx.first_check_s), expires_at),
            )
            s.add(attempt)
    return t.Answer(
        t.Outcome.OK,
        t.BillAnswer(
            order_id=attempt.id,
            payment_code=view.payment_code,
            agency_name=view.agency_name,
            payer_name=bills.mask_name(view.payer_name),
            amount=due.total,
            principal=due.principal,
            late_fee=due.late_fee,
            due_date=view.due_date.isoformat(),
            pay_before=attempt.expires_at,
            items=tuple((li.name, li.amount) for li in view.lines),
        ),
    )


# ------------------------------------------------------------------ confirm and upload

_RECORD = text(
    "WITH i AS (SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb)) AS i(seq bigint,"
    " order_id uuid, payment_code varchar, amount bigint, paid_at timestamptz,"
    " acquirer_ref varchar, method varchar, digest text)),"
    " ins AS (INSERT INTO kiosk_confirmations (device_id, seq, order_id, payment_code, amount,"
    " paid_at, acquirer_ref, method, digest, uploaded)"
    " SELECT :device, seq, order_id, payment_code, amount, paid_at, acquirer_ref, method,"
    " decode(digest, 'hex'), :uploaded FROM i"
    " ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq),"
    " top AS (SELECT max(seq) AS top FROM i),"
    # The numbers skipped above the device's highest (read under its row lock) are gaps.
    " gaps AS (INSERT INTO kiosk_gaps (device_id, seq)"
    " SELECT :device, g FROM top, generate_series(CAST(:last_seq AS bigint) + 1, top.top - 1) AS g"
    " WHERE g NOT IN (SELECT seq FROM i) ON CONFLICT DO NOTHING RETURNING seq),"
    " dev AS (UPDATE kiosk_devices SET last_seq = greatest(last_seq, top.top)"
    " FROM top WHERE id = :device RETURNING id),"
    " closed AS (UPDATE kiosk_gaps AS k SET closed_at = now() FROM i"
    " WHERE k.device_id = :device AND k.seq = i.seq AND k.closed_at IS NULL RETURNING k.seq)"
    " SELECT i.seq, ins.seq IS NOT NULL AS fresh,"
    " coalesce(encode(k.digest, 'hex') = i.digest, true) AS same"
    " FROM i LEFT JOIN ins ON ins.seq = i.seq"
    " LEFT JOIN kiosk_confirmations AS k ON k.device_id = :device AND k.seq = i.seq"
)
"""Record a batch of one device's confirmations: each new sequence number once, the gaps
it opens and closes, the device's highest number. One statement after the device's row
lock, so the gaps are computed from a number no concurrent batch is moving."""

_LOCK_DEVICE = text("SELECT last_seq FROM kiosk_devices WHERE id = :device FOR UPDATE")


async def record(
    conn: AsyncConnection, device_id: str, items: Sequence[t.Confirm], *, uploaded: bool
) -> dict[int, bool] | None:
    """Record the confirmations in the caller's transaction: seq → whether it agrees with
    what is recorded for it (new, or the same facts again). None when the numbers jump too
    far past the device's highest (nothing recorded)."""
    last = int((await conn.execute(_LOCK_DEVICE, {"device": device_id})).scalar_one())
    if max(c.seq for c in items) > last + t.MAX_SEQ_JUMP:
        return None
    payload = [
        {
            "seq": c.seq,
            "order_id": str(c.order_id) if c.order_id else None,
            "payment_code": c.payment_code,
            "amount": c.amount,
            "paid_at": c.paid_at.isoformat(),
            "acquirer_ref": c.acquirer_ref,
            "method": c.method,
            "digest": c.digest().hex(),
        }
        for c in items
    ]
    rows = await conn.execute(
        _RECORD,
        {"items": json.dumps(payload), "device": device_id, "uploaded": uploaded, "last_seq": last},
    )
    return {r.seq: bool(r.fresh or r.same) for r in rows}


async def confirm(
    ctx: PaymentContext,
    device: Device,
    items: list[t.Confirm],
    *,
    uploaded: bool,
    now: datetime,
) -> list[t.ConfirmAnswer] | None:
    """Record, then apply, a device's confirmations: one answer each, in the order given.
    None when the batch is refused whole (a sequence number jumping too far)."""
    first: dict[int, t.Confirm] = {}
    inner_conflicts: set[int] = set()
    for c in items:  # the same number twice in one upload: the first copy counts
        if c.seq in first and first[c.seq].digest() != c.digest():
            inner_conflicts.add(c.seq)
        first.setdefault(c.seq, c)
    async with ctx.sessions.kw["bind"].begin() as conn:
        agrees = await record(conn, device.id, list(first.values()), uploaded=uploaded)
    if agrees is None:
        log.warning("kiosk sequence jumps too far", device_id=device.id)
        return None
    to_apply = [c for c in first.values() if agrees[c.seq]]
    applied = await asyncio.gather(
        *(_apply(ctx, device, c, with_slip=not uploaded, now=now) for c in to_apply)
    )
    by_seq = {c.seq: a for c, a in zip(to_apply, applied, strict=True)}
    answers = []
    for i, c in enumerate(items):
        again = c.seq in inner_conflicts and items.index(first[c.seq]) != i
        if again or c.seq not in by_seq:
            answers.append(t.ConfirmAnswer(seq=c.seq, outcome=t.Outcome.CONFLICT))
        else:
            answers.append(by_seq[c.seq])
    return answers


def _answer(c: t.Confirm, result: ConfirmResult) -> t.ConfirmAnswer:
    outcome = result.outcome
    if outcome == ConfirmOutcome.REJECTED_AMOUNT:
        return t.ConfirmAnswer(c.seq, t.Outcome.AMOUNT_DIFFERS)
    if outcome == ConfirmOutcome.REJECTED_STATE:
        return t.ConfirmAnswer(c.seq, t.Outcome.CONFLICT)
    if outcome == ConfirmOutcome.UNKNOWN_ATTEMPT:
        return t.ConfirmAnswer(c.seq, t.Outcome.UNKNOWN_ORDER)
    return t.ConfirmAnswer(
        c.seq,
        t.Outcome.OK,
        disposition="PAID" if result.receipt_kind == "PAYMENT" else "REFUND",
        order_id=result.attempt_id,
        receipt_id=result.receipt_id,
    )


async def _apply(
    ctx: PaymentContext, device: Device, c: t.Confirm, *, with_slip: bool, now: datetime
) -> t.ConfirmAnswer:
    bound = log.bind(device_id=device.id, seq=c.seq)
    problem = _code_problem(c.payment_code)
    if problem is not None:
        return t.ConfirmAnswer(c.seq, problem)
    result: ConfirmResult | None = None
    if c.order_id is not None:
        result = await confirm_payment(
            ctx.sessions,
            ctx.redis,
            attempt_id=c.order_id,
            channel_trade_no=c.acquirer_ref,
            amount=c.amount,
            paid_at=c.paid_at,
            source=SOURCE,
            cutoff=ctx.cutoff,
            channel=CHANNEL,
            pay_mode=PayMode.KIOSK,
        )
        if result.outcome in {ConfirmOutcome.REJECTED_STATE, ConfirmOutcome.UNKNOWN_ATTEMPT}:
            # The order was paid by another charge (or is not a kiosk order): this charge is
            # real money all the same, so it is judged by its payment code below.
            bound.info("kiosk order cannot take this charge", outcome=result.outcome)
            result = None
    if result is None:
        found = await _confirm_by_code(ctx, c, now)
        if isinstance(found, t.Outcome):
            bound.info("kiosk confirmation refused", outcome=found)
            return t.ConfirmAnswer(c.seq, found)
        result = found
    answer = _answer(c, result)
    if with_slip and answer.receipt_id is not None:
        async with ctx.sessions.kw["bind"].connect() as conn:
            printed = await slip(
                conn,
                answer.receipt_id,
                public_url=ctx.public_url,
                device_id=device.id,
                seq=c.seq,
                method=c.method,
                card=c.card,
            )
        answer = t.ConfirmAnswer(
            answer.seq,
            answer.outcome,
            answer.disposition,
            answer.order_id,
            answer.receipt_id,
            printed,
        )
    return answer


_BY_REF = (
    select(_A.c.id, _A.c.bill_id, _A.c.amount, _B.c.payment_code)
    .select_from(_A.join(_B, _B.c.id == _A.c.bill_id))
    .where(_A.c.channel == CHANNEL, _A.c.channel_trade_no == bindparam("p_ref"))
)
_BILL_LOCKED = (
    select(*BILL_COLUMNS, _B.c.due_date, _B.c.late_fee_rule)
    .where(_B.c.payment_code == bindparam("p_code"))
    .with_for_update()
)


async def _confirm_by_code(
    ctx: PaymentContext, c: t.Confirm, now: datetime
) -> ConfirmResult | t.Outcome:
    """Apply a charge by its payment code: the attempt its acquirer reference names, or one
    opened for it (and confirmed in the same transaction)."""
    for _ in range(2):  # a second pass after losing a race on a unique index
        try:
            async with core_transaction(ctx.sessions) as conn:
                found = await _by_code_in(conn, ctx, c, now)
            break
        except IntegrityError:
            continue  # rolled back whole; the winner has committed: the next pass finds it
    else:
        return t.Outcome.CONFLICT
    if isinstance(found, t.Outcome):
        return found
    result, payment_code = found
    await after_commit(ctx.redis, result, payment_code, SOURCE)
    return result


async def _by_code_in(
    conn: AsyncConnection, ctx: PaymentContext, c: t.Confirm, now: datetime
) -> tuple[ConfirmResult, str] | t.Outcome:
    confirm_args: dict[str, Any] = {
        "channel_trade_no": c.acquirer_ref,
        "amount": c.amount,
        "paid_at": c.paid_at,
        "source": SOURCE,
        "cutoff": ctx.cutoff,
        "pay_mode": PayMode.KIOSK,
    }
    known = (await conn.execute(_BY_REF, {"p_ref": c.acquirer_ref})).first()
    if known is not None:
        if known.payment_code != c.payment_code or known.amount != c.amount:
            return t.Outcome.CONFLICT
        return await apply_confirmation(
            conn, attempt_id=known.id, bill_id=known.bill_id, **confirm_args
        )
    row = (await conn.execute(_BILL_LOCKED, {"p_code": c.payment_code})).first()
    if row is None:
        return t.Outcome.UNKNOWN_CODE
    bill = bill_facts(row)
    due = bills.due_on(row, shanghai_today(c.paid_at), ctx.day_count)
    if bill.status == BillStatus.ISSUED and c.amount != due.total:
        return t.Outcome.AMOUNT_DIFFERS
    attempt_id = uuid.uuid4()
    expires_at = now + timedelta(seconds=ctx.attempt_ttl_s)
    attempt = AttemptFacts(
        id=attempt_id,
        bill_id=bill.id,
        channel=CHANNEL,
        status=AttemptStatus.PENDING,
        amount=c.amount,
        channel_trade_no=c.acquirer_ref,
        new={
            "id": attempt_id,
            "bill_id": bill.id,
            "channel": CHANNEL,
            "mode": MODE,
            "amount": c.amount,
            "expires_at": expires_at,
            "next_check_at": expires_at,
        },
    )
    return await apply_to_locked(conn, bill, attempt, **confirm_args)


# ------------------------------------------------------------------ reprint, heartbeat, gaps

_RECEIPT_OF_SEQ = text(
    "SELECT k.method, r.id AS receipt_id FROM kiosk_confirmations AS k"
    " JOIN receipts AS r ON r.channel = :channel AND r.channel_trade_no = k.acquirer_ref"
    " WHERE k.device_id = :device AND k.seq = :seq"
)


async def reprint(ctx: PaymentContext, device_id: str, seq: int) -> t.Slip | None:
    """The slip of a past confirmation of this device (补打), marked as a reprint."""
    async with ctx.sessions.kw["bind"].connect() as conn:
        row = (
            await conn.execute(
                _RECEIPT_OF_SEQ, {"channel": CHANNEL, "device": device_id, "seq": seq}
            )
        ).first()
        if row is None:
            return None
        return await slip(
            conn,
            row.receipt_id,
            public_url=ctx.public_url,
            device_id=device_id,
            seq=seq,
            method=row.method,
            reprint=True,
        )


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
    ctx: PaymentContext, device_id: str, announced: int, *, now: datetime
) -> tuple[tuple[int, int], ...] | None:
    """The device is alive; numbers it announces but has not sent are gaps. The gaps still
    open, as ranges (what the device should upload). None for an announcement jumping too
    far (nothing written)."""
    async with ctx.sessions.kw["bind"].begin() as conn:
        last = int((await conn.execute(_LOCK_DEVICE, {"device": device_id})).scalar_one())
        if announced > last + t.MAX_SEQ_JUMP:
            return None
        await conn.execute(_HEARTBEAT, {"device": device_id, "announced": announced, "now": now})
    return await missing_ranges(ctx, device_id)


_OPEN_GAPS = text(
    "SELECT device_id, min(seq) AS first, max(seq) AS last, count(*) AS n,"
    " min(detected_at) AS since FROM (SELECT device_id, seq, detected_at,"
    " seq - row_number() OVER (PARTITION BY device_id ORDER BY seq) AS island"
    " FROM kiosk_gaps WHERE closed_at IS NULL AND (CAST(:device AS varchar) IS NULL"
    " OR device_id = :device)) AS g GROUP BY device_id, island ORDER BY device_id, first"
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
