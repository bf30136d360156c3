"""The morning reconciliation: every channel with a statement, the previous business day,
once — whatever number of workers on whatever number of machines run it.

The guard is PostgreSQL's: a (channel, day) is claimed with a transaction-scoped advisory
lock held while its run goes (a worker that dies lets go with its connection), and under
the claim the day's `recon_runs` rows decide. A DONE run (the worker's, or one finance
started by hand) is never redone; FAILED ones — the statement could not be fetched, the file
was refused — are retried after a wait that doubles with each, up to a bounded number of
tries, after which the channel waits for a person (`paygate reconcile`). A RUNNING row seen
under the claim belongs to a run that died (or to a hand run under way: reconcile's own lock
orders the two, and a second DONE run is harmless); it counts as a try.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from settlement.models import ReconRun
from settlement.reconcile import StatementSource, fetch_and_reconcile

__all__ = ["Outcome", "Retry", "reconcile_day"]

log = structlog.get_logger(__name__)


class Outcome(enum.StrEnum):
    DONE = "done"
    """Reconciled by this call."""
    ALREADY_DONE = "already_done"
    BUSY = "busy"
    """Another worker holds the claim right now."""
    WAITING = "waiting"
    """Failed before; the next try is not due yet."""
    GAVE_UP = "gave_up"
    """Failed as many times as allowed: a person reruns it."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Retry:
    first_s: float
    """Wait after the first failure; each further failure doubles it (up to `max_wait_s`)."""
    tries: int
    """Runs at most (failed ones counted) before the worker leaves the day to a person."""
    max_wait_s: float = 4 * 3600

    def wait(self, failures: int) -> timedelta:
        return timedelta(seconds=min(self.first_s * 2 ** max(failures - 1, 0), self.max_wait_s))


async def reconcile_day(
    sessions: async_sessionmaker[AsyncSession],
    sources: Iterable[StatementSource],
    *,
    day: date,
    retry: Retry,
    options: Callable[[str], dict[str, Any]],
) -> dict[str, Outcome]:
    """Each source's statement of `day` reconciled unless done, claimed elsewhere or not due.

    `options(channel)` are the keyword arguments of its `reconcile` (hold days, fee rate,
    cutoff, the auto-heal)."""
    return {
        source.name: await _one(sessions, source, day, retry, options(source.name))
        for source in sources
    }


async def _one(
    sessions: async_sessionmaker[AsyncSession],
    source: StatementSource,
    day: date,
    retry: Retry,
    options: dict[str, Any],
) -> Outcome:
    with structlog.contextvars.bound_contextvars(channel=source.name, day=day.isoformat()):
        # The claim's transaction stays open (idle) while the run goes in its own sessions.
        async with sessions() as claim, claim.begin():
            claimed = await claim.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                {"k": f"recon-daily:{source.name}:{day.isoformat()}"},
            )
            if not claimed:
                return Outcome.BUSY
            runs = (
                await claim.execute(
                    select(ReconRun.status, ReconRun.started_at, ReconRun.finished_at).where(
                        ReconRun.channel == source.name, ReconRun.business_date == day
                    )
                )
            ).all()
            if any(status == "DONE" for status, _, _ in runs):
                return Outcome.ALREADY_DONE
            failures = len(runs)
            if failures >= retry.tries:
                # Its FAILED runs are in finance's list; no warning a minute all day.
                log.debug("daily reconciliation left to a person", tries=failures)
                return Outcome.GAVE_UP
            if failures:
                last = max(finished or started for _, started, finished in runs)
                if datetime.now(UTC) < last + retry.wait(failures):
                    return Outcome.WAITING
            try:
                result = await fetch_and_reconcile(sessions, source, day=day, **options)
            except Exception as exc:  # noqa: BLE001 - recorded as a FAILED run; retried later
                log.warning(
                    "daily reconciliation failed",
                    tries=failures + 1,
                    retry_in_s=retry.wait(failures + 1).total_seconds(),
                    error=f"{type(exc).__name__}: {exc}",
                )
                return Outcome.FAILED
            log.info("daily reconciliation done", run_id=result.run_id, tries=failures + 1)
            return Outcome.DONE
