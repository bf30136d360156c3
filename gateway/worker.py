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

import structlog

from gateway.state import Resources

log = structlog.get_logger(__name__)

JobFn = Callable[[Resources], Awaitable[int]]
"""A job returns how many items it handled (0 = idle)."""


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval_s: float
    run: JobFn


async def expire_bills(resources: Resources) -> int:
    from billing.bills import expire_due

    async with resources.sessions() as session:
        n = await expire_due(session)
        await session.commit()
    return n


async def purge_auth_nonces(resources: Resources) -> int:
    from gateway.auth import purge_nonces

    await purge_nonces(resources)
    return 0  # housekeeping: never makes the loop spin


def default_jobs() -> list[Job]:
    """Every job the worker runs; features add theirs here."""
    return [
        Job("bills.expire", 30.0, expire_bills),
        Job("auth.purge_nonces", 300.0, purge_auth_nonces),
    ]


async def run_once(resources: Resources, jobs: list[Job] | None = None) -> dict[str, int]:
    """Run every job once (used by tests and `paygate worker --once`)."""
    handled: dict[str, int] = {}
    for job in jobs if jobs is not None else default_jobs():
        handled[job.name] = await job.run(resources)
    return handled


async def run_forever(resources: Resources, jobs: list[Job] | None = None) -> None:
    jobs = list(jobs if jobs is not None else default_jobs())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    next_run = dict.fromkeys((j.name for j in jobs), 0.0)
    log.info("worker started", jobs=[j.name for j in jobs])
    while not stop.is_set():
        now = time.monotonic()
        for job in jobs:
            if now < next_run[job.name]:
                continue
            bound = structlog.contextvars.bound_contextvars(job=job.name)
            with bound:
                try:
                    handled = await job.run(resources)
                except Exception:
                    log.exception("job failed")
                    handled = 0
            # A busy job runs again at once; an idle one waits its interval.
            next_run[job.name] = now if handled else now + job.interval_s
        wake = min(next_run.values(), default=now + 1.0) - time.monotonic()
        if wake > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(wake, 1.0))
    log.info("worker stopped")
