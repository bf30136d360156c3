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


async def _pos_terminal(resources: Resources) -> list[str]:
    """A card terminal at the first demo agency's counter; its key is new on every start
    (shown once, as always), so the printed command works."""
    from sqlalchemy import select

    from billing.models import Agency
    from gateway.demo_billing import DEMO_AGENCIES
    from kernel.audit import Actor
    from kernel.errors import NotFound
    from payments.pos import terminals

    merchant, terminal, actor = "898330170110001", "POS00001", Actor("admin", "demo")
    async with resources.sessions() as session:
        agency_id = await session.scalar(
            select(Agency.id).where(Agency.credit_code == DEMO_AGENCIES[0][0])
        )
        assert agency_id is not None
        try:
            made = await terminals.rotate_key(
                session, merchant_id=merchant, terminal_id=terminal, actor=actor
            )
        except NotFound:
            made = await terminals.register(
                session,
                merchant_id=merchant,
                terminal_id=terminal,
                agency_id=agency_id,
                counter="演示窗口",
                actor=actor,
            )
        await session.commit()
    url = resources.settings.server.public_url
    return [
        f"demo POS terminal {merchant}/{terminal}: pay a demo bill at the counter with",
        (
            f"  paygate simulator pos --gateway {url} --merchant {merchant}"
            f" --terminal {terminal} --key {made.key} sale <payment code> <amount in fen>"
        ),
    ]


SEEDERS: list[Seeder] = [seed_billing, _treasuries, _pos_terminal]


async def seed(resources: Resources) -> list[str]:
    lines: list[str] = []
    for seeder in SEEDERS:
        lines += await seeder(resources)
    log.info("demo data seeded", seeders=len(SEEDERS))
    return lines
