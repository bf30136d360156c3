"""Demo data for `make run` / `paygate demo`: features register seeders here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from gateway.demo_billing import seed_billing
from gateway.state import Resources

log = structlog.get_logger(__name__)

Seeder = Callable[[Resources], Awaitable[list[str]]]
"""A seeder is idempotent and returns lines worth printing to the person running the demo."""


async def _treasuries(resources: Resources) -> list[str]:
    from settlement.demo import seed_treasuries

    async with resources.sessions() as session:
        added = await seed_treasuries(session)
        await session.commit()
    return [f"treasuries: {added} added"] if added else []


SEEDERS: list[Seeder] = [seed_billing, _treasuries]


async def seed(resources: Resources) -> list[str]:
    lines: list[str] = []
    for seeder in SEEDERS:
        lines += await seeder(resources)
    log.info("demo data seeded", seeders=len(SEEDERS))
    return lines
