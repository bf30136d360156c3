"""Reconcile N statement lines against N receipts, then settle the N receipts.

Each is timed beside a raw-SQL baseline measured in the same run on the same database:

- reconcile baseline: COPY the same rows into a temp table + one FULL JOIN classifying them;
- settle baseline: the GROUP BY that totals the day by region × item plus the two UPDATEs
  that move receipts and bills to SETTLED (rolled back afterwards).

Ours does everything the product does on top (staging that is kept, discrepancy upserts,
audit rows, ledger postings, settled_receipts, bill events, batches). Data is generated
with generate_series; statement lines are produced by a Python generator (streamed, never
held in memory) with ~0.1% platform-only, ~0.1% amount mismatches and ~0.01% unknown trades.
Peak RSS is this process's (the Python side); PostgreSQL runs as its own server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from bench.runner import PeakRSS, Row
from channels.base import StatementKind, StatementLine

DAY = date(2026, 11, 20)
PAID_AT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # 10:00 in Beijing
AGENCY = uuid.UUID("00000000-0000-4000-8000-00000000be0c")

_TABLES = (
    "batched_refunds, deposit_lines, deposit_batches, settled_receipts, settlements,"
    " discrepancies, recon_runs, statement_lines, statement_files, ledger_pending, journal_lines,"
    " journal_entries, ledger_accounts, treasuries, refunds, receipts, payment_attempts,"
    " bill_events, bill_lines, bills, agency_items, agencies, revenue_items, audit_log, outbox"
)

_GENERATE = (
    (
        "INSERT INTO revenue_items (code, name, category, budget_subject, split_l2_bp, split_l3_bp,"
        " min_amount, max_amount, active_from) VALUES ('BENCH', 'bench fine', 'FINE',"
        " '103050101001', 3333, 6667, 1, 100000000, '2020-01-01')"
    ),
    (
        "INSERT INTO agencies (id, credit_code, name, region_code) VALUES"
        " ('{agency}', '120000000000000001', 'bench agency', '330100')"
    ),
    (
        "INSERT INTO treasuries (region_code, budget_level, treasury_code, finance_org_code, name)"
        " SELECT '330100', l, '330100' || lpad(l::text, 2, '0'), 'F330100', 'bench'"
        " FROM generate_series(1, 6) l"
    ),
    (
        "INSERT INTO bills (id, agency_id, agency_bill_no, request_hash, payment_code, category,"
        " status, payer_type, payer_name_enc, principal_amount, paid_amount, due_date, expires_at,"
        " paid_at) SELECT md5('b' || i)::uuid, '{agency}', 'B' || i, '\\x00',"
        " lpad(i::text, 20, '0'),"
        " 'FINE', 'PAID', 'PERSON', '\\x00', 100 + i % 10000, 100 + i % 10000, '{day}',"
        " '{paid}'::timestamptz + interval '30 days', '{paid}' FROM generate_series(1, {n}) i"
    ),
    (
        "INSERT INTO bill_lines (bill_id, line_no, item_code, quantity, unit_amount, amount)"
        " SELECT md5('b' || i)::uuid, 1, 'BENCH', 1, 100 + i % 10000, 100 + i % 10000"
        " FROM generate_series(1, {n}) i"
    ),
    (
        "INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount,"
        " channel_trade_no,"
        " expires_at) SELECT md5('a' || i)::uuid, md5('b' || i)::uuid, 'alipay', 'qr', 'SUCCEEDED',"
        " 100 + i % 10000, '2026' || lpad(i::text, 12, '0'), '{paid}'"
        " FROM generate_series(1, {n}) i"
    ),
    (
        "INSERT INTO receipts (id, bill_id, attempt_id, channel, channel_trade_no, kind,"
        " pay_mode, amount, paid_at, business_date) SELECT md5('r' || i)::uuid,"
        " md5('b' || i)::uuid, md5('a' || i)::uuid, 'alipay', '2026' || lpad(i::text, 12, '0'),"
        " 'PAYMENT', 'ALIPAY', 100 + i % 10000, '{paid}', '{day}' FROM generate_series(1, {n}) i"
    ),
)


def _attempt(i: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"a{i}".encode()).hexdigest()))


def statement(n: int) -> Iterator[StatementLine]:
    """The channel's file: every receipt but 0.1%, 0.1% with a wrong amount, a few strangers."""
    for i in range(1, n + 1):
        if i % 1000 == 1:
            continue  # platform-only
        amount = 100 + i % 10000 + (1 if i % 1000 == 2 else 0)
        yield StatementLine(
            channel_trade_no=f"2026{i:012d}",
            attempt_id=_attempt(i),
            kind=StatementKind.PAYMENT,
            amount=amount,
            fee=0,
            occurred_at=PAID_AT,
        )
    for j in range(max(1, n // 10_000)):
        yield StatementLine(
            f"9999{j:012d}", str(uuid.uuid4()), StatementKind.PAYMENT, 500, 0, PAID_AT
        )


def raw_rows(n: int) -> Iterator[tuple[Any, ...]]:
    """The same file as plain tuples, for the baseline."""
    for line in statement(n):
        yield (line.channel_trade_no, line.attempt_id, "PAYMENT", line.amount, 0, PAID_AT, None)


_BASE_MATCH = """
SELECT count(*) FILTER (WHERE s.attempt_id IS NULL) AS platform_only,
       count(*) FILTER (WHERE r.id IS NULL) AS channel_only,
       count(*) FILTER (WHERE s.amount <> r.amount) AS mismatched,
       count(*) FILTER (WHERE s.amount = r.amount) AS matched
FROM base_stage s
FULL JOIN (SELECT id, attempt_id::text AS k, amount FROM receipts
           WHERE channel = 'alipay' AND business_date = $1) r ON r.k = s.attempt_id
"""

_BASE_SETTLE = (
    (
        "SELECT a.region_code, bl.item_code, sum(bl.amount + r.amount - b.principal_amount)"
        " FROM receipts r JOIN bills b ON b.id = r.bill_id JOIN agencies a ON a.id = b.agency_id"
        " JOIN bill_lines bl ON bl.bill_id = b.id"
        " WHERE r.business_date = $1 AND r.status = 'CONFIRMED' GROUP BY 1, 2"
    ),
    "UPDATE receipts SET status = 'SETTLED' WHERE business_date = $1 AND status = 'CONFIRMED'",
    (
        "UPDATE bills b SET status = 'SETTLED' FROM receipts r WHERE r.bill_id = b.id"
        " AND r.business_date = $1 AND b.status = 'PAID'"
    ),
)


async def _generate(engine: AsyncEngine, n: int) -> None:
    import ledger

    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
        for sql in _GENERATE:
            await conn.execute(
                text(sql.format(agency=AGENCY, day=DAY.isoformat(), paid=PAID_AT.isoformat(), n=n))
            )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        total = await session.scalar(text("SELECT sum(amount) FROM receipts"))
        # The receipts' postings in one entry (the confirm path posts them one by one).
        await ledger.post(
            session,
            kind="bench",
            ref="receipts",
            lines=[("clearing:alipay", int(total or 0)), ("revenue_pending", -int(total or 0))],
        )
        await session.commit()
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))


async def _baseline_reconcile(engine: AsyncEngine, n: int) -> float:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        tx = raw.transaction()
        await tx.start()
        start = time.perf_counter()
        await raw.execute(
            "CREATE TEMP TABLE base_stage (channel_trade_no text, attempt_id text, kind text,"
            " amount bigint, fee bigint, occurred_at timestamptz, refund_id text)"
        )
        await raw.copy_records_to_table("base_stage", records=raw_rows(n))
        await raw.fetch(_BASE_MATCH, DAY)
        elapsed = time.perf_counter() - start
        await tx.rollback()
    return elapsed


async def _baseline_settle(engine: AsyncEngine) -> float:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        tx = raw.transaction()  # rolled back: the product run settles the same receipts
        await tx.start()
        start = time.perf_counter()
        await raw.fetch(_BASE_SETTLE[0], DAY)
        for sql in _BASE_SETTLE[1:]:
            await raw.execute(sql, DAY)
        elapsed = time.perf_counter() - start
        await tx.rollback()
    return elapsed


async def _main(n: int) -> list[Row]:
    import ledger
    from gateway.db import create_engine
    from settlement import treasury
    from settlement.reconcile import reconcile

    engine = create_engine(os.environ["DATABASE_URL"])
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        t0 = time.perf_counter()
        await _generate(engine, n)
        print(f"   generated {n:,} receipts in {time.perf_counter() - t0:.1f}s", flush=True)
        base_recon = await _baseline_reconcile(engine, n)
        with PeakRSS(os.getpid()) as rss_recon:
            start = time.perf_counter()
            result = await reconcile(
                sessions, channel="alipay", day=DAY, lines=statement(n), today=DAY
            )
            ours_recon = time.perf_counter() - start
        base_settle = await _baseline_settle(engine)
        stages: dict[str, float] = {}

        def lap(stage: str) -> None:
            stages[stage] = time.perf_counter()

        with PeakRSS(os.getpid()) as rss_settle:
            start = time.perf_counter()
            async with sessions() as session:
                settled = await treasury.settle(session, day=DAY, actor="bench", progress=lap)
                await session.commit()
            ours_settle = time.perf_counter() - start
        marks = [start, *stages.values()]
        print(
            "   settle stages: "
            + ", ".join(
                f"{name} {b - a:.2f}s" for name, a, b in zip(stages, marks, marks[1:], strict=False)
            ),
            flush=True,
        )
        async with sessions() as session:
            report = await ledger.verify(session)
    finally:
        await engine.dispose()
    counts = result.counts
    return [
        Row(
            scenario="settlement.reconcile",
            ours=ours_recon,
            baseline=base_recon,
            unit="s",
            goal="<= 2.0",
            higher_is_better=False,
            peak_rss_mb=rss_recon.mb,
            notes=(
                f"{n:,} receipts; matched {counts.get('matched', 0):,},"
                f" platform-only {counts.get('platform_only.held', 0):,},"
                f" amount mismatch {counts.get('amount_mismatch.open', 0):,},"
                f" channel-only {counts.get('channel_only.open', 0):,}"
            ),
        ),
        Row(
            scenario="settlement.settle",
            ours=ours_settle,
            baseline=base_settle,
            unit="s",
            goal="<= 2.0",
            higher_is_better=False,
            peak_rss_mb=rss_settle.mb,
            notes=(
                f"settled {settled.receipts:,} receipts into {len(settled.batches)} batches;"
                f" ledger verify {'OK' if report.ok else 'FAILED'}"
            ),
        ),
    ]


def run(*, quick: bool) -> list[Row]:
    n = int(os.environ.get("PAYGATE_BENCH_SETTLE_N") or (50_000 if quick else 1_000_000))
    return asyncio.run(_main(n))
