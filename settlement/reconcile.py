"""Daily reconciliation (日终对账) of one channel's statement against our receipts.

Flow per channel + business day, all set-based in SQL:

1. `ingest()` streams the channel's `StatementLine`s into `statement_lines` with COPY. A
   re-sent file (same channel + day + content hash) is detected and not loaded again; a
   different file for the same day supersedes the previous one.
2. `reconcile()` FULL JOINs the current file with the day's receipts and classifies every
   difference. A line is matched by the channel's own number first (bank serial, Alipay
   trade number, acquirer reference — one per charge), then by our attempt id (the merchant
   order number the channel echoes). A bank payment confirmed without a prior query carries
   the bank's order id, not ours, and is known to us only by its serial; a second charge
   under an order already paid carries that order's id but is our DUPLICATE receipt, known
   by its own number. A receipt is paired with one line at most:

   - PLATFORM_ONLY: we have a receipt (or a succeeded refund) the channel does not list.
     HELD for `hold_days` (the file may be late), then OPEN.
   - CHANNEL_ONLY: the channel took money we never confirmed. Auto-heal: if the attempt
     exists it is confirmed through the exactly-once path (`ConfirmPayment`); if the line
     names one of our bills by payment code (a bank confirmation sent without a prior query
     and lost) it is confirmed through the channel's own confirmation (`ConfirmByCode`),
     action `healed_from_statement`; otherwise the money is parked in suspense (ledger) for
     a person to identify or return.
   - AMOUNT_MISMATCH: both sides, different amounts.
   - STATUS_MISMATCH: the channel refunded, our refund is not SUCCEEDED.
   - DUPLICATE_PAYMENT: the channel line is a duplicate payment of an already paid bill.
     Resolved automatically when its refund is already under way.
   - FEE_MISMATCH: the fee differs from the configured rate for the channel.
   - REVERSED_SETTLED: the channel settled a payment we recorded as taken back — a card
     sale its terminal reversed (冲正) or voided (撤销), still in the acquirer's file. Not
     healed: the payer was charged and we hold no payment; a person has the acquirer
     correct it or returns the money.

   Refund lines are matched by our refund id, or — for a refund the channel's own device
   made (a card terminal's 退货), which carries none — by the channel's number we recorded
   for it.

3. The whole run is one transaction guarded by an advisory lock on (channel, day): it is
   idempotent and can be re-run at will; a failed run leaves nothing half-done behind and is
   recorded as FAILED in `recon_runs`. Discrepancies are upserted by (class, key); those a
   re-run no longer finds are resolved as `cleared_by_rerun`. A discrepancy already
   RESOLVED or ACCEPTED by a person is never reopened.
"""

from __future__ import annotations

import hashlib
import time as time_
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import ColumnElement, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import ledger
from billing.models import Bill
from channels.base import StatementKind, StatementLine
from kernel import audit
from kernel.audit import Actor
from kernel.clock import SHANGHAI, day_bounds
from kernel.errors import Conflict, InvalidInput, NotFound
from kernel.states import sql_in
from payments.context import PaymentContext
from payments.models import Receipt
from settlement.models import Discrepancy, ReconRun, StatementFile
from settlement.states import DISCREPANCY, DiscrepancyStatus

__all__ = [
    "ConfirmByCode",
    "ConfirmPayment",
    "IngestResult",
    "ReconResult",
    "StatementSource",
    "act_on",
    "channel_confirm",
    "exactly_once_confirm",
    "expire_holds",
    "fetch_and_reconcile",
    "load_statement",
    "reconcile",
]

log = structlog.get_logger(__name__)

X = DiscrepancyStatus
OPEN_STATES = tuple(sorted(DISCREPANCY.live))
"""A discrepancy still waiting for someone (HELD or OPEN); the others are closed for good."""
_OPEN_SQL = sql_in(OPEN_STATES)


class StatementSource(Protocol):
    """What a channel implements for reconciliation; every ChannelAdapter satisfies it."""

    name: str

    async def fetch_statement(self, day: date) -> bytes: ...

    def parse_statement(self, raw: bytes) -> Iterable[StatementLine]: ...


class ConfirmPayment(Protocol):
    """The exactly-once confirmation path, called by the auto-heal in the caller's session.

    Bound at merge to `payments.confirm.confirm_payment`. It must record the receipt (and
    its ledger entry) or do nothing if the attempt is already confirmed, and raise on
    anything it cannot do; the discrepancy is resolved in the same transaction.
    """

    async def __call__(
        self,
        session: AsyncSession,
        *,
        attempt_id: uuid.UUID,
        channel: str,
        channel_trade_no: str,
        amount: int,
        paid_at: datetime,
    ) -> None: ...


class ConfirmByCode(Protocol):
    """The channel's own confirmation, for money its statement names only by a payment code.

    A bank payment confirmed without a prior query whose confirmation never reached us
    exists on our side not at all: the day-end line (serial, payment code, amount, time) is
    confirmed as the bank's message would have been, by the same path, so it is recorded
    once whatever arrives later (a retried confirmation answers as a repeat). Bound at
    merge to `channel_confirm`; raises when the path refuses (the line stays open).
    """

    async def __call__(
        self, *, channel: str, payment_code: str, reference: str, amount: int, paid_at: datetime
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class IngestResult:
    file_id: int
    duplicate: bool
    """True: this exact file was received before and nothing was loaded."""
    lines: int


@dataclass
class ReconResult:
    run_id: int
    channel: str
    business_date: date
    file_id: int | None
    duplicate_file: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    healed: int = 0


async def load_statement(
    source: StatementSource, day: date, raw: bytes | None = None
) -> tuple[Iterable[StatementLine], bytes]:
    """A channel's statement for a day (fetched unless given) and the hash of its bytes."""
    data = raw if raw is not None else await source.fetch_statement(day)
    return source.parse_statement(data), hashlib.sha256(data).digest()


# ------------------------------------------------------------------ ingestion

_COLUMNS = (
    "file_id",
    "line_no",
    "channel_trade_no",
    "attempt_id",
    "kind",
    "amount",
    "fee",
    "occurred_at",
    "refund_id",
    "payment_code",
)


async def _raw_connection(session: AsyncSession) -> Any:
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def ingest(
    session: AsyncSession,
    *,
    channel: str,
    day: date,
    lines: Iterable[StatementLine],
    content_hash: bytes | None = None,
) -> IngestResult:
    """Stream statement lines into staging with COPY, in the caller's transaction.

    `content_hash` is the SHA-256 of the raw file when there is one; otherwise the lines
    themselves are hashed while they stream.
    """
    if content_hash is not None:
        seen = await session.scalar(
            select(StatementFile.id).where(
                StatementFile.channel == channel,
                StatementFile.business_date == day,
                StatementFile.content_hash == content_hash,
            )
        )
        if seen is not None:
            return IngestResult(seen, duplicate=True, lines=0)
    async with session.begin_nested() as savepoint:
        # Loaded as SUPERSEDED and promoted once complete, so that the partial unique index
        # on the current file never sees two at once.
        file_id = await session.scalar(
            text(
                "INSERT INTO statement_files (channel, business_date, content_hash, status)"
                " VALUES (:c, :d, :h, 'SUPERSEDED') RETURNING id"
            ),
            {"c": channel, "d": day, "h": content_hash or uuid.uuid4().bytes},
        )
        assert file_id is not None
        hasher = hashlib.sha256()
        stats = {"n": 0, "pay": 0, "ref": 0}

        def records() -> Iterator[tuple[Any, ...]]:
            for n, line in enumerate(lines, start=1):
                if line.occurred_at.tzinfo is None:
                    raise InvalidInput(f"statement line {n}: time without zone", code="naive_time")
                kind = StatementKind(line.kind)
                if content_hash is None:
                    hasher.update(
                        f"{line.channel_trade_no}|{line.attempt_id}|{kind}|{line.amount}|"
                        f"{line.fee}|{line.occurred_at.isoformat()}|{line.refund_id}"
                        f"{'|' + line.payment_code if line.payment_code else ''}\n".encode()
                    )
                stats["n"] = n
                stats["pay" if kind is StatementKind.PAYMENT else "ref"] += line.amount
                yield (
                    file_id,
                    n,
                    line.channel_trade_no,
                    line.attempt_id,
                    kind.value,
                    line.amount,
                    line.fee,
                    line.occurred_at,
                    line.refund_id,
                    line.payment_code,
                )

        apg = await _raw_connection(session)
        await apg.copy_records_to_table("statement_lines", records=records(), columns=_COLUMNS)
        digest = content_hash or hasher.digest()
        if content_hash is None:
            seen = await session.scalar(
                select(StatementFile.id).where(
                    StatementFile.channel == channel,
                    StatementFile.business_date == day,
                    StatementFile.content_hash == digest,
                )
            )
            if seen is not None:
                await savepoint.rollback()
                return IngestResult(seen, duplicate=True, lines=0)
        await session.execute(
            update(StatementFile)
            .where(
                StatementFile.channel == channel,
                StatementFile.business_date == day,
                StatementFile.status == "CURRENT",
            )
            .values(status="SUPERSEDED")
        )
        await session.execute(
            update(StatementFile)
            .where(StatementFile.id == file_id)
            .values(
                status="CURRENT",
                content_hash=digest,
                line_count=stats["n"],
                payment_total=stats["pay"],
                refund_total=stats["ref"],
            )
        )
    log.info("statement loaded", channel=channel, day=day.isoformat(), lines=stats["n"])
    return IngestResult(file_id, duplicate=False, lines=stats["n"])


# ------------------------------------------------------------------ matching

# Every receipt of the day against every payment line of the current file. A line is paired
# with its receipt by the channel's own number first (bank serial, Alipay trade number,
# acquirer reference: one per charge), then by our order id (the attempt id): a second charge
# under an order already paid carries that order's id but its own number, and is our
# DUPLICATE receipt, not the order's. The channel's number is also the only key of a bank
# payment confirmed without a prior query (its order id is the bank's). Pairing first and
# FULL JOINing on the paired receipt id keeps the join hashable (an OR condition is not).
_MATCH = """
CREATE TEMP TABLE recon_pay ON COMMIT DROP AS
WITH s AS (
    SELECT line_no, attempt_id, channel_trade_no, amount, fee, occurred_at, payment_code
    FROM statement_lines WHERE file_id = :file AND kind = 'PAYMENT'),
r AS (
    SELECT id, attempt_id, attempt_id::text AS akey, channel_trade_no, amount, kind
    FROM receipts WHERE channel = :ch AND business_date = :day
      AND kind <> 'REVERSED'),
paired AS (
    SELECT s.*, coalesce(by_trade.id, by_order.id) AS rid, by_trade.id IS NOT NULL AS by_number
    FROM s
    LEFT JOIN r by_trade ON by_trade.channel_trade_no = s.channel_trade_no
                        AND s.channel_trade_no <> ''
    LEFT JOIN r by_order ON by_order.akey = s.attempt_id)
SELECT p.line_no, p.by_number,
       p.attempt_id AS s_key, p.channel_trade_no AS s_trade, p.amount AS s_amount,
       p.fee AS s_fee, p.occurred_at AS s_at, p.payment_code AS s_code,
       r.id AS receipt_id, r.attempt_id AS r_attempt, r.channel_trade_no AS r_trade,
       r.amount AS r_amount, r.kind AS r_kind
FROM paired p FULL JOIN r ON r.id = p.rid
"""

# A receipt is paired with one line at most: when several claim it (a second charge we never
# heard of names the paid order; a line listed twice), a number claim beats an order claim,
# then the first line wins; the others keep no receipt (money the channel lists that is not
# this receipt's). Rare, so a fix-up after the pairing rather than a costlier pairing: the
# common day pays one hash aggregate here (reconcile's bench measures the difference).
_CONTESTED = """
UPDATE recon_pay p
SET receipt_id = NULL, r_attempt = NULL, r_trade = NULL, r_amount = NULL, r_kind = NULL
FROM (SELECT line_no, row_number() OVER (PARTITION BY receipt_id
                                         ORDER BY by_number DESC, line_no) AS n
      FROM recon_pay WHERE receipt_id IN (
          SELECT receipt_id FROM recon_pay WHERE line_no IS NOT NULL AND receipt_id IS NOT NULL
          GROUP BY receipt_id HAVING count(*) > 1)) AS x
WHERE x.n > 1 AND p.line_no = x.line_no
"""

# Differences, one row per (class, key); everything else in recon_pay matched.
_FOUND = """
CREATE TEMP TABLE recon_found ON COMMIT DROP AS
-- The key of a difference found on the channel's side is our order id, or the channel's
-- number when several lines name one order (a second charge under it; charges with none).
-- (Only unpaired lines' keys are looked at: a hashed probe of a few keys, not a count of all.)
WITH twins AS (
    SELECT s_key FROM recon_pay
    WHERE s_key IN (SELECT s_key FROM recon_pay WHERE receipt_id IS NULL AND s_key IS NOT NULL)
    GROUP BY s_key HAVING count(*) > 1)
-- we have it, the channel does not (yet)
SELECT 'PLATFORM_ONLY'::text AS klass, r_attempt::text AS match_key, r_attempt AS attempt_id,
       receipt_id, r_trade AS channel_trade_no, r_amount AS our_amount,
       NULL::bigint AS channel_amount, NULL::bigint AS channel_fee, NULL::bigint AS expected_fee,
       NULL::timestamptz AS occurred_at, NULL::varchar AS payment_code
FROM recon_pay WHERE s_key IS NULL
UNION ALL
-- the channel has money we never confirmed (a receipt on another business day is no news;
-- one of this day's, already paired with another line, is not this line's money);
-- its attempt, if we have one, found by our order id or by the channel's number
SELECT 'CHANNEL_ONLY',
       CASE WHEN tw.s_key IS NOT NULL AND p.s_trade <> '' THEN p.s_trade ELSE p.s_key END,
       coalesce(a.id, t.id), NULL, p.s_trade, NULL, p.s_amount, p.s_fee, NULL, p.s_at, p.s_code
FROM recon_pay p
LEFT JOIN twins tw ON tw.s_key = p.s_key
LEFT JOIN payment_attempts a
  ON a.id = CASE WHEN p.s_key ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                 THEN p.s_key::uuid END
LEFT JOIN payment_attempts t
  ON t.channel = :ch AND t.channel_trade_no = p.s_trade AND p.s_trade <> ''
WHERE p.receipt_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM receipts x
                  WHERE (x.attempt_id = coalesce(a.id, t.id)
                         OR (x.channel = :ch AND x.channel_trade_no = p.s_trade))
                    AND NOT (x.channel = :ch AND x.business_date = :day
                             AND x.kind <> 'REVERSED'))
UNION ALL
-- the channel settled money we recorded as taken back (a reversal or a void: the receipt is
-- REVERSED), found by our order id or the channel's number; not healed, a person decides.
-- Looked up per unmatched line through the receipts' unique indexes (few lines; no scan).
SELECT 'REVERSED_SETTLED',
       CASE WHEN tw.s_key IS NOT NULL AND p.s_trade <> '' THEN p.s_trade ELSE p.s_key END,
       x.attempt_id, x.id, p.s_trade, x.amount, p.s_amount, p.s_fee, NULL, p.s_at, NULL
FROM recon_pay p
LEFT JOIN twins tw ON tw.s_key = p.s_key
CROSS JOIN LATERAL (
    SELECT y.attempt_id, y.id, y.amount FROM receipts y
    WHERE y.kind = 'REVERSED' AND y.channel = :ch
      AND (y.attempt_id = CASE WHEN p.s_key ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                               THEN p.s_key::uuid END
           OR (y.channel_trade_no = p.s_trade AND p.s_trade <> ''))
    LIMIT 1) x
WHERE p.receipt_id IS NULL AND p.s_key IS NOT NULL
UNION ALL
SELECT 'AMOUNT_MISMATCH', r_attempt::text, r_attempt, receipt_id, s_trade, r_amount, s_amount,
       s_fee, NULL, s_at, NULL
FROM recon_pay WHERE s_key IS NOT NULL AND receipt_id IS NOT NULL AND s_amount <> r_amount
UNION ALL
SELECT 'DUPLICATE_PAYMENT', r_attempt::text, r_attempt, receipt_id, s_trade, r_amount, s_amount,
       s_fee, NULL, s_at, NULL
FROM recon_pay WHERE s_key IS NOT NULL AND r_kind = 'DUPLICATE'
UNION ALL
SELECT 'FEE_MISMATCH', r_attempt::text, r_attempt, receipt_id, s_trade, r_amount, s_amount,
       s_fee, (s_amount * CAST(:fee_bp AS bigint) + 5000) / 10000, s_at, NULL
FROM recon_pay
WHERE CAST(:fee_bp AS bigint) >= 0 AND s_key IS NOT NULL AND receipt_id IS NOT NULL
  AND s_fee <> (s_amount * CAST(:fee_bp AS bigint) + 5000) / 10000
UNION ALL
-- refunds: the channel refunded and our refund is not SUCCEEDED (or unknown to us)
SELECT CASE WHEN f.id IS NOT NULL AND f.amount <> -s.amount THEN 'AMOUNT_MISMATCH'
            ELSE 'STATUS_MISMATCH' END,
       coalesce(s.refund_id, s.channel_trade_no), NULL, f.receipt_id, s.channel_trade_no,
       f.amount, -s.amount, s.fee, NULL, s.occurred_at, NULL
FROM (SELECT s.*, coalesce(fi.id, fr.id) AS fid
      FROM statement_lines s
      LEFT JOIN refunds fi ON fi.id::text = s.refund_id
      -- a refund the channel's own device made (a card terminal's 退货) carries no refund
      -- id of ours: it is known by the channel's number we recorded for it
      LEFT JOIN refunds fr ON s.refund_id IS NULL AND fr.channel_refund_no = s.channel_trade_no
                          AND EXISTS (SELECT 1 FROM receipts rr
                                      WHERE rr.id = fr.receipt_id AND rr.channel = :ch)
      WHERE s.file_id = :file AND s.kind = 'REFUND') s
LEFT JOIN refunds f ON f.id = s.fid
WHERE (f.id IS NULL OR f.status <> 'SUCCEEDED' OR f.amount <> -s.amount)
UNION ALL
-- refunds we completed at this channel during the day that the channel does not list
SELECT 'PLATFORM_ONLY', f.id::text, r.attempt_id, f.receipt_id, r.channel_trade_no,
       f.amount, NULL, NULL, NULL, f.completed_at, NULL
FROM refunds f JOIN receipts r ON r.id = f.receipt_id
WHERE f.route = 'CHANNEL' AND f.status = 'SUCCEEDED' AND r.channel = :ch
  AND f.completed_at >= :start AND f.completed_at < :end
  AND NOT EXISTS (SELECT 1 FROM statement_lines s WHERE s.file_id = :file AND s.kind = 'REFUND'
                  AND (s.refund_id = f.id::text
                       OR (s.refund_id IS NULL AND s.channel_trade_no = f.channel_refund_no)))
"""

_UPSERT = f"""
INSERT INTO discrepancies (channel, business_date, klass, match_key, status, attempt_id,
    receipt_id, channel_trade_no, our_amount, channel_amount, channel_fee, expected_fee,
    occurred_at, hold_until, payment_code)
SELECT :ch, :day, klass, match_key,
       CASE WHEN klass = 'PLATFORM_ONLY' AND CAST(:today AS date) <= CAST(:hold AS date)
            THEN 'HELD' ELSE 'OPEN' END,
       attempt_id, receipt_id, channel_trade_no, our_amount, channel_amount, channel_fee,
       expected_fee, occurred_at,
       CASE WHEN klass = 'PLATFORM_ONLY' THEN CAST(:hold AS date) END, payment_code
FROM recon_found
ON CONFLICT (channel, business_date, klass, match_key) DO UPDATE SET
    status = CASE WHEN discrepancies.status IN {_OPEN_SQL} THEN EXCLUDED.status
                  ELSE discrepancies.status END,
    attempt_id = EXCLUDED.attempt_id, receipt_id = EXCLUDED.receipt_id,
    channel_trade_no = EXCLUDED.channel_trade_no, our_amount = EXCLUDED.our_amount,
    channel_amount = EXCLUDED.channel_amount, channel_fee = EXCLUDED.channel_fee,
    expected_fee = EXCLUDED.expected_fee, occurred_at = EXCLUDED.occurred_at,
    hold_until = EXCLUDED.hold_until, payment_code = EXCLUDED.payment_code, updated_at = now()
"""  # noqa: S608 - machine states and constants only

# A re-run that no longer finds an open difference closes it, with an audit row each.
_CLEAR = f"""
WITH cleared AS (
    UPDATE discrepancies d SET status = '{X.RESOLVED}', action = 'cleared_by_rerun',
        resolved_by = 'system', resolved_at = now(), updated_at = now()
    WHERE d.channel = :ch AND d.business_date = :day
      AND d.status IN {sql_in(DISCREPANCY.sources(X.RESOLVED))}
      AND NOT EXISTS (SELECT 1 FROM recon_found f
                      WHERE f.klass = d.klass AND f.match_key = d.match_key)
    RETURNING d.id)
INSERT INTO audit_log (actor_type, actor_id, action, object_type, object_id, detail)
SELECT 'system', 'reconcile', 'discrepancy.cleared_by_rerun', 'discrepancy', id::text, '{{}}'
FROM cleared
"""  # noqa: S608 - machine states and constants only

# Safe automatic resolution: a duplicate whose refund is already under way.
DISCREPANCY.check(X.OPEN, X.RESOLVED)
_AUTO_DUPLICATES = f"""
WITH done AS (
    UPDATE discrepancies d SET status = '{X.RESOLVED}', action = 'auto_refund_in_progress',
        resolved_by = 'system', resolved_at = now(), updated_at = now()
    WHERE d.channel = :ch AND d.business_date = :day AND d.status = '{X.OPEN}'
      AND d.klass = 'DUPLICATE_PAYMENT'
      AND EXISTS (SELECT 1 FROM refunds f WHERE f.receipt_id = d.receipt_id
                  AND f.status <> 'FAILED')
    RETURNING d.id)
INSERT INTO audit_log (actor_type, actor_id, action, object_type, object_id, detail)
SELECT 'system', 'reconcile', 'discrepancy.auto_resolved', 'discrepancy', id::text, '{{}}'
FROM done
"""  # noqa: S608 - machine states and constants only

_MATCHED = """
SELECT count(*) FILTER (WHERE s_amount = r_amount),
       coalesce(sum(s_amount) FILTER (WHERE s_amount = r_amount), 0),
       coalesce(sum(s_fee) FILTER (WHERE s_key IS NOT NULL), 0),
       count(*) FILTER (WHERE s_key IS NOT NULL),
       count(*) FILTER (WHERE receipt_id IS NOT NULL)
FROM recon_pay
"""


class _Phases:
    """Seconds per phase of a run, for the debug log (where does a slow run spend?)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time_.perf_counter()

    def lap(self, name: str) -> None:
        now = time_.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


async def _start_run(sessions: async_sessionmaker[AsyncSession], channel: str, day: date) -> int:
    async with sessions() as session:
        run = ReconRun(channel=channel, business_date=day, status="RUNNING")
        session.add(run)
        await session.commit()
        return run.id


async def _fail_run(
    sessions: async_sessionmaker[AsyncSession], run_id: int, exc: BaseException
) -> None:
    async with sessions() as session:
        await session.execute(
            update(ReconRun)
            .where(ReconRun.id == run_id)
            .values(
                status="FAILED",
                error=f"{type(exc).__name__}: {exc}"[:2000],
                finished_at=func.now(),
            )
        )
        await session.commit()


async def fetch_and_reconcile(
    sessions: async_sessionmaker[AsyncSession],
    source: StatementSource,
    *,
    day: date,
    **options: Any,
) -> ReconResult:
    """The channel's statement fetched and reconciled (`options`: those of `reconcile`).

    A fetch that fails (the channel down, no file yet) is recorded as a FAILED run as well,
    so finance sees it and the daily job knows to retry it."""
    try:
        lines, digest = await load_statement(source, day)
    except Exception as exc:
        run_id = await _start_run(sessions, source.name, day)
        await _fail_run(sessions, run_id, exc)
        log.warning(
            "statement not fetched",
            channel=source.name,
            day=day.isoformat(),
            run_id=run_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    return await reconcile(
        sessions, channel=source.name, day=day, lines=lines, content_hash=digest, **options
    )


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    *,
    channel: str,
    day: date,
    hold_days: int = 3,
    fee_rate_bp: int | None = None,
    lines: Iterable[StatementLine] | None = None,
    content_hash: bytes | None = None,
    confirm: ConfirmPayment | None = None,
    confirm_by_code: ConfirmByCode | None = None,
    today: date | None = None,
    cutoff: time = time(0, 0),
) -> ReconResult:
    """Reconcile one channel's business day; re-runnable, one transaction per run.

    `lines` loads a new statement first; without it the day's current file is used.
    `confirm` enables the auto-heal of channel-only payments whose attempt exists;
    `confirm_by_code` that of channel-only payments the line names only by payment code.
    """
    log_ = log.bind(channel=channel, day=day.isoformat())
    run_id = await _start_run(sessions, channel, day)
    today = today or datetime.now(SHANGHAI).date()
    start, end = day_bounds(day, cutoff)
    result = ReconResult(run_id=run_id, channel=channel, business_date=day, file_id=None)
    clock = _Phases()
    try:
        async with sessions() as session:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                {"k": f"recon:{channel}:{day.isoformat()}"},
            )
            if lines is not None:
                ingested = await ingest(
                    session, channel=channel, day=day, lines=lines, content_hash=content_hash
                )
                result.duplicate_file = ingested.duplicate
                clock.lap("ingest")
            file_id = await session.scalar(
                select(StatementFile.id).where(
                    StatementFile.channel == channel,
                    StatementFile.business_date == day,
                    StatementFile.status == "CURRENT",
                )
            )
            if file_id is None:
                raise NotFound(
                    f"no statement for {channel} on {day.isoformat()}", code="no_statement"
                )
            result.file_id = file_id
            params: dict[str, Any] = {"file": file_id, "ch": channel, "day": day}
            await session.execute(text(_MATCH), params)
            await session.execute(text(_CONTESTED))
            await session.execute(text("ANALYZE recon_pay"))
            clock.lap("match")
            await session.execute(
                text(_FOUND),
                {
                    **params,
                    "fee_bp": -1 if fee_rate_bp is None else fee_rate_bp,
                    "start": start,
                    "end": end,
                },
            )
            await session.execute(
                text(_UPSERT),
                {**params, "today": today, "hold": day + timedelta(days=hold_days)},
            )
            clock.lap("classify")
            await session.execute(text(_CLEAR), params)
            await session.execute(text(_AUTO_DUPLICATES), params)
            await _refund_duplicates(session, channel, day)
            await _park_unknown_in_suspense(session, channel, day)
            clock.lap("resolve")
            matched = (await session.execute(text(_MATCHED))).one()
            await _post_fees(session, channel, day, file_id, int(matched[2]))
            by_class = await session.execute(
                select(Discrepancy.klass, Discrepancy.status, func.count())
                .where(Discrepancy.channel == channel, Discrepancy.business_date == day)
                .group_by(Discrepancy.klass, Discrepancy.status)
            )
            counts = {
                "matched": int(matched[0]),
                "matched_amount": int(matched[1]),
                "fees": int(matched[2]),
                "statement_payments": int(matched[3]),
                "receipts": int(matched[4]),
            }
            for klass, status, n in by_class:
                counts[f"{klass.lower()}.{status.lower()}"] = int(n)
            result.counts = counts
            await session.execute(
                update(ReconRun)
                .where(ReconRun.id == run_id)
                .values(status="DONE", file_id=file_id, counts=counts, finished_at=func.now())
            )
            await session.commit()
            clock.lap("commit")
    except Exception as exc:
        await _fail_run(sessions, run_id, exc)
        log_.warning("reconciliation failed", run_id=run_id, error=str(exc))
        raise
    if confirm is not None:
        result.healed = await auto_heal(
            sessions, channel=channel, day=day, confirm=confirm, confirm_by_code=confirm_by_code
        )
        result.counts["healed"] = result.healed
    log_.info("reconciled", run_id=run_id, **{**result.counts, "healed": result.healed})
    log_.debug("reconcile phases", **clock.laps)
    return result


async def _refund_duplicates(session: AsyncSession, channel: str, day: date) -> None:
    """A duplicate the channel confirms and nobody refunds yet: open its refund (safe)."""
    from payments import refunds

    rows = await session.scalars(
        select(Discrepancy).where(
            Discrepancy.channel == channel,
            Discrepancy.business_date == day,
            Discrepancy.klass == "DUPLICATE_PAYMENT",
            Discrepancy.status == "OPEN",
            Discrepancy.receipt_id.is_not(None),
        )
    )
    for d in list(rows):
        assert d.receipt_id is not None
        receipt = await session.get(Receipt, d.receipt_id)
        if receipt is None or receipt.kind != "DUPLICATE":
            continue
        available = receipt.amount - receipt.refunded_amount
        if available > 0:
            await refunds.request_refund(
                session,
                receipt_id=receipt.id,
                amount=available,
                reason="duplicate payment found by reconciliation",
                actor=Actor("system", "reconcile"),
                refund_id=uuid.uuid5(_DUPLICATE_REFUNDS, str(receipt.id)),
            )
        _close(session, d, status="RESOLVED", action="auto_refund_opened", who="system")


_DUPLICATE_REFUNDS = uuid.UUID("5f0c1f9e-2d55-4b8e-9a51-6d1b0f5a7c11")
"""Namespace of the deterministic refund id of a duplicate (one refund per receipt)."""


async def _park_unknown_in_suspense(session: AsyncSession, channel: str, day: date) -> None:
    """Channel-only money with no attempt of ours and no bill of ours named: book it to
    suspense (once per trade)."""
    rows = await session.execute(
        select(Discrepancy).where(
            Discrepancy.channel == channel,
            Discrepancy.business_date == day,
            Discrepancy.klass == "CHANNEL_ONLY",
            Discrepancy.status == "OPEN",
            Discrepancy.attempt_id.is_(None),
            Discrepancy.action.is_(None),
            # Money naming one of our bills is not unidentified: the heal confirms it.
            ~exists().where(Bill.payment_code == Discrepancy.payment_code),
        )
    )
    for d in rows.scalars():
        assert d.channel_amount is not None
        await ledger.post_suspense(
            session,
            channel=channel,
            ref=f"{channel}:{d.channel_trade_no or d.match_key}",
            amount=d.channel_amount,
            business_date=day,
        )
        d.action = "parked_in_suspense"
        audit.record(
            session,
            actor_type="system",
            actor_id="reconcile",
            action="discrepancy.parked_in_suspense",
            object_type="discrepancy",
            object_id=str(d.id),
            detail={"amount": d.channel_amount},
        )


async def _post_fees(
    session: AsyncSession, channel: str, day: date, file_id: int, total: int
) -> None:
    """The day's fees as one entry per statement file; a superseded file's is reversed."""
    prefix = f"{channel}:{day.isoformat()}:"
    ref = f"{prefix}{file_id}"
    stale = await session.execute(
        text(
            "SELECT e.id FROM journal_entries e WHERE e.kind = 'fee' AND e.ref LIKE :p"
            " AND e.ref <> :ref AND NOT EXISTS (SELECT 1 FROM journal_entries r"
            " WHERE r.reverses_id = e.id)"
        ),
        {"p": prefix + "%", "ref": ref},
    )
    for (entry_id,) in stale:
        await ledger.reverse(session, entry_id, memo="statement superseded")
    if total:
        await ledger.post_fee(session, channel=channel, ref=ref, amount=total, business_date=day)


def exactly_once_confirm(ctx: PaymentContext) -> ConfirmPayment:
    """Auto-heal through the exactly-once confirmation path.

    The confirmation runs in its own transaction (that path owns its locks); a crash before
    the discrepancy is closed is healed by the next run, which the path answers with
    ALREADY_CONFIRMED. A refused confirmation (wrong amount, attempt in a state that cannot
    succeed) raises, so the discrepancy stays open for a person.
    """
    from payments.confirm import confirm_payment

    async def confirm(
        session: AsyncSession,
        *,
        attempt_id: uuid.UUID,
        channel: str,
        channel_trade_no: str,
        amount: int,
        paid_at: datetime,
    ) -> None:
        del session, channel
        result = await confirm_payment(
            ctx.sessions,
            ctx.redis,
            attempt_id=attempt_id,
            channel_trade_no=channel_trade_no,
            amount=amount,
            paid_at=paid_at,
            source="reconcile",
            cutoff=ctx.cutoff,
        )
        if not result.acknowledged:
            raise RuntimeError(f"confirmation refused: {result.outcome}")

    return confirm


async def auto_heal(
    sessions: async_sessionmaker[AsyncSession],
    *,
    channel: str,
    day: date,
    confirm: ConfirmPayment,
    confirm_by_code: ConfirmByCode | None = None,
) -> int:
    """Confirm every open channel-only payment whose attempt exists — or, with
    `confirm_by_code`, whose line names a payment code — one transaction each."""
    known: ColumnElement[bool] = Discrepancy.attempt_id.is_not(None)
    if confirm_by_code is not None:
        known = known | Discrepancy.payment_code.is_not(None)
    async with sessions() as session:
        ids = list(
            await session.scalars(
                select(Discrepancy.id).where(
                    Discrepancy.channel == channel,
                    Discrepancy.business_date == day,
                    Discrepancy.klass == "CHANNEL_ONLY",
                    Discrepancy.status == "OPEN",
                    Discrepancy.action.is_(None),  # not parked in suspense
                    known,
                )
            )
        )
    healed = 0
    for discrepancy_id in ids:
        async with sessions() as session:
            d = await session.scalar(
                select(Discrepancy)
                .where(Discrepancy.id == discrepancy_id, Discrepancy.status == "OPEN")
                .with_for_update(skip_locked=True)
            )
            if d is None:
                continue
            assert d.channel_amount is not None
            reference = d.channel_trade_no or d.match_key
            paid_at = d.occurred_at or datetime.now(UTC)
            try:
                if d.attempt_id is not None:
                    await confirm(
                        session,
                        attempt_id=d.attempt_id,
                        channel=channel,
                        channel_trade_no=reference,
                        amount=d.channel_amount,
                        paid_at=paid_at,
                    )
                    action = "auto_confirmed"
                else:
                    assert confirm_by_code is not None
                    assert d.payment_code is not None
                    await confirm_by_code(
                        channel=channel,
                        payment_code=d.payment_code,
                        reference=reference,
                        amount=d.channel_amount,
                        paid_at=paid_at,
                    )
                    action = "healed_from_statement"
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the heal
                await session.rollback()
                log.warning("auto-heal failed", discrepancy_id=discrepancy_id, error=str(exc))
                continue
            _close(session, d, status="RESOLVED", action=action, who="system")
            await session.commit()
            healed += 1
    return healed


def channel_confirm(ctx: PaymentContext) -> ConfirmByCode:
    """Heal by payment code through the channels' own confirmation (payments.inbound)."""
    from channels.base import ConfirmPayment as Confirmation
    from channels.base import Outcome
    from payments.inbound import Sent
    from payments.inbound import confirm as confirm_inbound

    async def heal(
        *, channel: str, payment_code: str, reference: str, amount: int, paid_at: datetime
    ) -> None:
        answer = await confirm_inbound(
            ctx,
            Sent(channel),
            Confirmation(
                payment_code=payment_code, reference=reference, amount=amount, paid_at=paid_at
            ),
            datetime.now(UTC),
        )
        if answer.outcome != Outcome.OK:
            raise RuntimeError(f"confirmation refused: {answer.outcome}")

    return heal


_EXPIRE_HOLDS = f"""
WITH opened AS (
    UPDATE discrepancies SET status = '{X.OPEN}', updated_at = now()
    WHERE status IN {sql_in(DISCREPANCY.sources(X.OPEN))} AND hold_until < :today
    RETURNING id)
INSERT INTO audit_log (actor_type, actor_id, action, object_type, object_id, detail)
SELECT 'system', 'reconcile', 'discrepancy.hold_expired', 'discrepancy', id::text, '{{}}'
FROM opened
"""  # noqa: S608 - machine states and constants only


async def expire_holds(session: AsyncSession, today: date | None = None) -> int:
    """Platform-only differences whose late-file window has passed become OPEN (audited)."""
    today = today or datetime.now(SHANGHAI).date()
    result = await session.execute(text(_EXPIRE_HOLDS), {"today": today})
    return int(getattr(result, "rowcount", 0) or 0)


# ------------------------------------------------------------------ people

RESOLUTIONS = frozenset(
    {"confirmed", "refunded", "returned_to_payer", "identified", "channel_corrected", "other"}
)


def _close(
    session: AsyncSession,
    d: Discrepancy,
    *,
    status: str,
    action: str,
    who: str,
    note: str | None = None,
    actor_type: str = "system",
) -> None:
    DISCREPANCY.check(d.status, status)
    d.status = status
    d.action = action
    d.resolved_by = who
    d.note = note
    d.resolved_at = datetime.now(UTC)
    audit.record(
        session,
        actor_type=actor_type,
        actor_id=who,
        action=f"discrepancy.{status.lower()}",
        object_type="discrepancy",
        object_id=str(d.id),
        detail={"class": d.klass, "action": action, "note": note},
    )


async def act_on(
    session: AsyncSession,
    discrepancy_id: int,
    *,
    decision: str,
    action: str,
    who: str,
    note: str | None = None,
) -> Discrepancy:
    """A person resolves (with an action) or accepts an open discrepancy; audited."""
    if decision not in {"RESOLVED", "ACCEPTED"}:
        raise InvalidInput("decision must be RESOLVED or ACCEPTED", code="unknown_decision")
    if decision == "RESOLVED" and action not in RESOLUTIONS:
        raise InvalidInput(f"action must be one of {sorted(RESOLUTIONS)}", code="unknown_action")
    d = await session.scalar(
        select(Discrepancy).where(Discrepancy.id == discrepancy_id).with_for_update()
    )
    if d is None:
        raise NotFound(f"no discrepancy {discrepancy_id}", code="discrepancy_not_found")
    if d.status not in OPEN_STATES:
        raise Conflict(f"discrepancy {discrepancy_id} is {d.status}", code="discrepancy_closed")
    _close(
        session,
        d,
        status=decision,
        action=action if decision == "RESOLVED" else "accepted",
        who=who,
        note=note,
        actor_type="finance",
    )
    await session.flush()
    return d
