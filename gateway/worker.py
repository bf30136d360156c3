"""The background worker: a loop of periodic jobs (outbox delivery, recovery, expiry...).

Jobs are listed by default_jobs(); each runs at its own interval. Every job must be safe to run
in several workers at once (they claim rows with SKIP LOCKED), and safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import text

from gateway.procs import freeze_startup_heap
from gateway.state import Resources
from kernel.clock import SHANGHAI, business_date
from kernel.db import database_unavailable

log = structlog.get_logger(__name__)

JobFn = Callable[[Resources], Awaitable[int]]
"""A job returns how many items it handled (0 = idle)."""


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval_s: float
    run: JobFn
    close: Callable[[], Awaitable[None]] | None = None
    """Releases what the job holds (e.g. an HTTP client) when the worker stops."""


def _webhook_jobs() -> list[Job]:
    from billing import webhook_delivery

    # One HTTP client per worker process, built on first use from the worker's settings.
    holder: list[webhook_delivery.Deliverer] = []

    async def deliver(res: Resources) -> int:
        if not holder:
            cfg = res.settings.webhooks
            holder.append(
                webhook_delivery.Deliverer(
                    timeout_ms=cfg.timeout_ms,
                    max_connections=cfg.max_connections,
                    batch_size=cfg.batch_size,
                    allow_private=cfg.allow_private,
                )
            )
        return await holder[0].deliver_due(res.sessions)

    async def ingest(res: Resources) -> int:
        return await webhook_delivery.ingest(res.sessions)

    async def close() -> None:
        while holder:
            await holder.pop().aclose()

    return [
        Job("webhooks.ingest", 1.0, ingest),
        Job("webhooks.deliver", 1.0, deliver, close),
    ]


async def _recover_attempts(resources: Resources) -> int:
    from payments.attempts import recover_attempts

    return await recover_attempts(resources.payment_context())


async def _execute_refunds(resources: Resources) -> int:
    from payments.refunds import execute_refunds

    return await execute_refunds(resources.payment_context())


async def _recover_refunds(resources: Resources) -> int:
    from payments.refunds import recover_refunds

    return await recover_refunds(resources.payment_context())


async def _ledger_rollup(resources: Resources) -> int:
    from ledger import rollup

    async with resources.sessions() as session:
        n = await rollup(session)
        await session.commit()
    return n


async def expire_bills(resources: Resources) -> int:
    from billing.bills import expire_due
    from billing.payer import invalidate

    async with resources.sessions() as session:
        codes = await expire_due(session)
        await session.commit()
    for code in codes:  # the citizen summary must not show an expired bill as payable
        await invalidate(resources.redis, code)
    return len(codes)


async def purge_auth_nonces(resources: Resources) -> int:
    from kernel.nonces import purge

    await purge(resources.sessions)
    return 0  # housekeeping: never makes the loop spin


async def _expire_recon_holds(resources: Resources) -> int:
    from settlement.reconcile import expire_holds

    async with resources.sessions() as session:
        opened = await expire_holds(session)
        await session.commit()
    return opened


def reconcile_daily_job(clock: Callable[[], datetime] | None = None) -> Job:
    """Each morning from PAYGATE_RECONCILE_AT (Asia/Shanghai), every channel with a
    statement reconciled for the previous business day, once across all workers
    (settlement.daily holds the guard and the retries). `clock` is for tests."""

    async def run(resources: Resources) -> int:
        from settlement import daily
        from settlement import reconcile as recon

        cfg = resources.settings.settlement
        now = (clock() if clock is not None else datetime.now(UTC)).astimezone(SHANGHAI)
        if now.time() < cfg.reconcile_at:
            return 0
        day = business_date(now, cfg.cutoff) - timedelta(days=1)
        registry = resources.channels
        # A channel that publishes no statement (card terminals without their acquirer
        # configured) has nothing to reconcile: skipped, not failed every morning.
        sources = [
            registry.get(name)
            for name in registry.names()
            if getattr(registry.get(name), "has_statement", True)
        ]
        ctx = resources.payment_context()

        def options(channel: str) -> dict[str, Any]:
            return {
                "hold_days": cfg.hold_days,
                "fee_rate_bp": cfg.fee_rates_bp.get(channel),
                "cutoff": cfg.cutoff,
                "confirm": recon.exactly_once_confirm(ctx),
                "confirm_by_code": recon.channel_confirm(ctx),
            }

        outcomes = await daily.reconcile_day(
            resources.sessions,
            sources,
            day=day,
            retry=daily.Retry(first_s=cfg.reconcile_retry_s, tries=cfg.reconcile_tries),
            options=options,
        )
        return sum(outcome is daily.Outcome.DONE for outcome in outcomes.values())

    return Job("settlement.reconcile_daily", 60.0, run)


async def _refresh_banks(resources: Resources) -> int:
    """Banks registered, rotated or disabled meanwhile reach this process's adapters."""
    await resources.banks.refresh()
    return 0


def default_jobs() -> list[Job]:
    """Every job the worker runs; features add theirs here."""
    from gateway import enotes

    return [
        *_webhook_jobs(),
        Job("enote.issue", 1.0, enotes.issue_job, enotes.close_signing),
        Job("enote.red", 5.0, enotes.red_job),
        Job("payments.recover", 10.0, _recover_attempts),
        Job("refunds.execute", 2.0, _execute_refunds),
        Job("refunds.recover", 60.0, _recover_refunds),
        Job("bills.expire", 30.0, expire_bills),
        Job("auth.purge_nonces", 300.0, purge_auth_nonces),
        Job("recon_hold_expiry", 3600.0, _expire_recon_holds),
        reconcile_daily_job(),
        Job("ledger.rollup", 5.0, _ledger_rollup),
        Job("banks.refresh", 5.0, _refresh_banks),
    ]


async def close_jobs(jobs: list[Job]) -> None:
    for job in jobs:
        if job.close is not None:
            try:
                await job.close()
            except Exception:
                log.exception("job close failed", job=job.name)


async def run_once(resources: Resources, jobs: list[Job] | None = None) -> dict[str, int]:
    """Run every job once (used by tests and `paygate worker --once`)."""
    handled: dict[str, int] = {}
    owned = jobs is None
    jobs = default_jobs() if jobs is None else jobs
    try:
        for job in jobs:
            handled[job.name] = await job.run(resources)
    finally:
        if owned:
            await close_jobs(jobs)
    return handled


class _Outage:
    """PostgreSQL out of reach: every job pauses (they all need it) and one probe a while
    checks whether it is back, the wait doubling up to a cap. Two log lines per outage
    (down, back) instead of a traceback per job per second."""

    first_wait_s = 1.0
    max_wait_s = 30.0

    def __init__(self) -> None:
        self.since: float | None = None
        self.wait_s = self.first_wait_s
        self.next_probe = 0.0

    def begin(self, exc: BaseException, now: float) -> None:
        if self.since is None:
            self.since, self.wait_s = now, self.first_wait_s
            log.warning(
                "database unavailable; jobs paused",
                exc_type=type(exc).__name__,
                retry_in_s=self.wait_s,
            )
        self.next_probe = now + self.wait_s

    async def probe(self, resources: Resources, now: float) -> bool:
        """Is the database back? (Only called while paused, once the wait is over.)"""
        try:
            async with resources.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            self.wait_s = min(self.wait_s * 2, self.max_wait_s)
            self.next_probe = now + self.wait_s
            return False
        log.info(
            "database reachable again; jobs resumed", down_s=round(now - (self.since or now), 1)
        )
        self.since = None
        return True


async def run_forever(resources: Resources, jobs: list[Job] | None = None) -> None:
    jobs = list(jobs if jobs is not None else default_jobs())
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    next_run = dict.fromkeys((j.name for j in jobs), 0.0)
    outage = _Outage()
    log.info("worker started", jobs=[j.name for j in jobs])
    while not stop.is_set():
        now = time.monotonic()
        if outage.since is not None and (
            now < outage.next_probe or not await outage.probe(resources, now)
        ):
            wake = outage.next_probe - now
        else:
            for job in jobs:
                if now < next_run[job.name]:
                    continue
                with structlog.contextvars.bound_contextvars(job=job.name):
                    try:
                        handled = await job.run(resources)
                    except Exception as exc:
                        if database_unavailable(exc):
                            outage.begin(exc, now)
                            break
                        log.exception("job failed")
                        handled = 0
                # A busy job runs again at once; an idle one waits its interval.
                next_run[job.name] = now if handled else now + job.interval_s
            wake = min(next_run.values(), default=now + 1.0) - time.monotonic()
            if outage.since is not None:
                wake = outage.next_probe - time.monotonic()
        if wake > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(wake, 1.0))
    await close_jobs(jobs)
    log.info("worker stopped")
