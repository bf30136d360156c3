"""Demo data for `make run` / `paygate demo`: features register seeders here."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from gateway.demo_billing import seed_billing
from gateway.state import Resources
from kernel.errors import NotFound

log = structlog.get_logger(__name__)

Seeder = Callable[[Resources], Awaitable[list[str]]]
"""A seeder is idempotent and returns lines worth printing to the person running the demo."""


async def _treasuries(resources: Resources) -> list[str]:
    from settlement.demo import seed_treasuries

    async with resources.sessions() as session:
        added = await seed_treasuries(session)
        await session.commit()
    return [f"treasuries: {added} added"] if added else []


POS_TERMINALS_FILE = Path("var/pos-sim/terminals.json")
"""The demo terminal's key for its page (`paygate simulator pos-terminal --terminals`)."""
KIOSK_DEVICE = "K-DEMO-0001"
KIOSK_DEVICES_FILE = Path("var/kiosk-sim/devices.json")
"""The demo kiosk's key for the kiosk simulator (`paygate simulator kiosk --devices`)."""


def _private_json(path: Path, doc: object) -> None:
    """Keys handed to a simulator: readable by this user only, rewritten on every seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)


async def _pos_terminal(resources: Resources) -> list[str]:
    """A card terminal at the first demo agency's counter; its key is new on every start
    (shown once, as always), so the printed command works."""
    from sqlalchemy import select

    from billing.models import Agency
    from gateway.demo_billing import DEMO_AGENCIES
    from kernel.audit import Actor
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
    _private_json(
        POS_TERMINALS_FILE,
        [{"merchant": merchant, "terminal": terminal, "key": made.key, "gateway_url": url}],
    )
    return [
        f"demo POS terminal {merchant}/{terminal}: pay a demo bill at the counter with",
        (
            f"  paygate simulator pos --gateway {url} --merchant {merchant}"
            f" --terminal {terminal} --key {made.key} sale <payment code> <amount in fen>"
        ),
    ]


async def _kiosk(resources: Resources) -> list[str]:
    """A kiosk in a service hall (when the kiosk channel is on, as `make run` makes it):
    registered once, a fresh key on every start handed to the simulator in a file, with
    the sequence number to go on from (the platform refuses a used number with new facts)."""
    from kernel.audit import Actor
    from kiosks import devices

    settings = resources.settings
    if not settings.payments.kiosk.enabled:
        return []
    actor = Actor("finance", "demo")
    async with resources.sessions() as session:
        try:
            last_seq = (await devices.get_device(session, KIOSK_DEVICE)).last_seq
            issued = await devices.rotate(session, KIOSK_DEVICE, actor=actor, sign_alg="HMAC")
        except NotFound:
            last_seq = 0
            issued = await devices.register(
                session,
                device_id=KIOSK_DEVICE,
                hall="市民中心一楼大厅（演示）",
                location="东侧 1 号机",
                region_code="330100",
                owner_hall="市民中心（演示）",
                acquirer_merchant_id="898330170110002",
                acquirer_terminal_id="K0000001",
                actor=actor,
            )
        await session.commit()
    device = {
        "device_id": KIOSK_DEVICE,
        "secret": issued.secret,
        "next_seq": last_seq + 1,
        "gateway_url": settings.server.public_url,
    }
    _private_json(KIOSK_DEVICES_FILE, [device])
    return [f"demo kiosk {KIOSK_DEVICE}: its key is in {KIOSK_DEVICES_FILE} for the simulator"]


SEEDERS: list[Seeder] = [seed_billing, _treasuries, _pos_terminal, _kiosk]


async def seed(resources: Resources) -> list[str]:
    lines: list[str] = []
    for seeder in SEEDERS:
        lines += await seeder(resources)
    log.info("demo data seeded", seeders=len(SEEDERS))
    return lines
