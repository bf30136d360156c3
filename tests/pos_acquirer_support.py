"""The card terminals' simulated acquirer on a real port, our POS adapter pointed at it, and
terminals that book every card transaction there first."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from channels.base import ChannelRegistry
from channels.pos.adapter import PosAdapter
from channels.pos.simulator import SimTerminal
from channels.pos.simulator_acquirer import create_app
from gateway.state import Resources
from payments.context import PaymentContext
from payments.models import Receipt
from tests.pos_support import PosWorld
from tests.servers import ServerThread

SECRET = hashlib.sha256(b"paygate-test-pos-acquirer").hexdigest().encode()


@dataclass
class Acquirer:
    url: str
    ctx: PaymentContext
    """Our payment context with the production POS adapter pointed at the simulator."""

    async def state(self) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{self.url}/control/state")
            r.raise_for_status()
            return r.json()

    async def control(self, what: str, **switches: Any) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(f"{self.url}/control/{what}", json=switches)
            r.raise_for_status()
            return r.json()


@pytest.fixture
async def acquirer(res: Resources, pos: PosWorld) -> AsyncIterator[Acquirer]:
    with ServerThread(create_app(SECRET)) as server:
        adapter = PosAdapter(acquirer_url=f"{server.url}/acquirer", acquirer_secret=SECRET)
        registry = ChannelRegistry()
        registry.register(adapter)
        ctx = PaymentContext(
            sessions=res.sessions, redis=res.redis, channels=registry, public_url=pos.gateway_url
        )
        pos.sim.acquirer_url = server.url
        yield Acquirer(server.url, ctx)
        await adapter.aclose()


@pytest.fixture
async def second_terminal(pos: PosWorld, acquirer: Acquirer) -> AsyncIterator[SimTerminal]:
    sim = await pos.terminal("898330170110002", "POS00002", acquirer_url=acquirer.url)
    yield sim
    await sim.aclose()


async def duplicate_sale(pos: PosWorld, other: SimTerminal, amount: int = 10_000) -> Receipt:
    """Two counters sell the same bill at the same moment, each card charged at the
    acquirer: one pays the bill; the other, confirmed after it, is recorded as a duplicate
    with its refund (the race the check before a sale cannot close). Tried on fresh bills
    until the race happens."""
    for _ in range(40):
        bill = await pos.bill(amount)
        await asyncio.gather(
            pos.sim.sale(bill.payment_code, amount), other.sale(bill.payment_code, amount)
        )
        async with pos.res.sessions() as s:
            found = await s.scalar(
                select(Receipt).where(Receipt.bill_id == bill.id, Receipt.kind == "DUPLICATE")
            )
        if found is not None:
            return found
    raise AssertionError("no duplicate in 40 races")
