"""The background worker: a loop of periodic jobs (outbox delivery, recovery, expiry...).

Jobs are listed by default_jobs(); each runs at its own interval. Every job must be safe to run
in several workers at once (they claim rows with SKIP LOCKED), and safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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


async def _expire_recon_holds(resources: Resources) -> int:
    from settlement.reconcile import expire_holds

    async with resources.sessions() as session:
        opened = await expire_holds(session)
        await session.commit()
    return opened


def default_jobs() -> list[Job]:
    """Every job the worker runs; features add theirs here."""
    return [Job("recon_hold_expiry", 3600.0, _expire_recon_holds)]


async def run_once(resources: Resources, jobs: list[Job] | None = None) -> dict[str, int]:
    """Run every job once (used by tests and `paygate worker --once`)."""
    handled: dict[str, int] = {}
    for job in jobs if jobs is not None else default_jobs():
        handled[job.name] = await job.run(resources)
    return handled


async def run_forever(
    resources: Resources, jobs: list[Job] | None = None, parent_pid: int | None = None
) -> None:
    jobs = list(jobs if jobs is not None else default_jobs())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    next_run = dict.fromkeys((j.name for j in jobs), 0.0)
    log.info("worker started", jobs=[j.name for j in jobs])
    while not stop.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            log.info("parent process gone; stopping")
            break
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
