"""Shared fixtures for payment tests: the bank simulator and our service on real ports.

tests/conftest.py re-exports the fixtures (`world`, `simulator`, `gateway_server`...); the
servers start only when a test asks. Everything is real: uvicorn (httptools) on 127.0.0.1,
real PostgreSQL and Redis.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Agency, Bill, RevenueItem
from billing.payment_code import compose
from channels.bank import inbound as bank_wire
from channels.bank import transforms as t
from channels.bank.adapter import BankAdapter
from channels.bank.simulator import create_app as create_simulator
from channels.base import ChannelRegistry
from gateway.app import create_app
from gateway.settings import BankSettings, Settings
from gateway.state import Resources
from payments import inbound
from payments.context import PaymentContext
from payments.models import PaymentAttempt
from tests.factories import make_agency, make_bill, make_item
from tests.servers import ServerThread

BANK_CODES = ("102", "103")


def bank_secret(code: str) -> bytes:
    # Derived for tests only; real secrets come from PAYGATE_BANKS.
    return hashlib.sha256(f"paygate-test-bank-{code}".encode()).hexdigest().encode()


@dataclass
class BankWorld:
    simulator_url: str
    gateway_url: str
    settings: Settings
    ctx: PaymentContext
    channels: ChannelRegistry

    def bank_url(self, code: str) -> str:
        return f"{self.simulator_url}/banks/{code}"

    async def customer_pays(self, bank_code: str, payment_code: str, **switches: Any) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(
                f"{self.simulator_url}/control/{bank_code}/pay",
                json={"payment_code": payment_code, "gateway_url": self.gateway_url, **switches},
            )
            r.raise_for_status()
            return r.json()

    async def bank_state(self, bank_code: str) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{self.simulator_url}/control/{bank_code}/state")
            r.raise_for_status()
            return r.json()


@pytest.fixture(scope="session")
def simulator() -> Iterator[ServerThread]:
    app = create_simulator({code: bank_secret(code) for code in BANK_CODES})
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="session")
def bank_settings(settings: Settings, simulator: ServerThread) -> Settings:
    banks = tuple(
        BankSettings(code=code, secret=bank_secret(code), base_url=f"{simulator.url}/banks/{code}")
        for code in BANK_CODES
    )
    return replace(settings, payments=replace(settings.payments, banks=banks))


@pytest.fixture(scope="session")
def gateway_server(bank_settings: Settings) -> Iterator[ServerThread]:
    """Our service on a real port, so the simulated banks can call it."""
    server = ServerThread(create_app(bank_settings))
    with server:
        yield server


@pytest.fixture(scope="session")
async def bank_channels(bank_settings: Settings) -> AsyncIterator[ChannelRegistry]:
    registry = ChannelRegistry()
    adapters = [
        BankAdapter(bank_code=bank.code, secret=bank.secret, base_url=bank.base_url)
        for bank in bank_settings.payments.banks
    ]
    for adapter in adapters:
        registry.register(adapter)
    yield registry
    for adapter in adapters:
        await adapter.aclose()


@pytest.fixture
def world(
    res: Resources,
    simulator: ServerThread,
    gateway_server: ServerThread,
    bank_settings: Settings,
    bank_channels: ChannelRegistry,
) -> BankWorld:
    ctx = PaymentContext(
        sessions=res.sessions,
        redis=res.redis,
        channels=bank_channels,
        public_url=gateway_server.url,
    )
    return BankWorld(simulator.url, gateway_server.url, bank_settings, ctx, bank_channels)


def valid_code(category: str = "FINE") -> str:
    return compose("330100", 26, category, secrets.randbelow(10**9))


async def bill_for_test(
    session: AsyncSession,
    *,
    amount: int = 20_000,
    category: str = "FINE",
    late_fee_rule: str = "NONE",
    status: str = "ISSUED",
    due_date: date | None = None,
    expires_at: datetime | None = None,
) -> tuple[Agency, RevenueItem, Bill]:
    item = await make_item(
        session,
        code=f"ITEM-{secrets.token_hex(4)}",
        category=category,
        late_fee_rule=late_fee_rule,
    )
    agency = await make_agency(session, items=[item])
    bill = await make_bill(
        session,
        agency,
        [(item, 1, amount)],
        status=status,
        payment_code=valid_code(category),
        due_date=due_date,
        expires_at=expires_at or datetime.now(UTC) + timedelta(days=30),
    )
    await session.commit()
    return agency, item, bill


async def open_attempt(
    sessions: async_sessionmaker[AsyncSession],
    bill: Bill,
    *,
    channel: str = "bank:102",
    status: str = "PENDING",
    amount: int | None = None,
) -> PaymentAttempt:
    """An attempt on `bill`, as the channel's create call would have left it."""
    async with sessions() as s:
        a = PaymentAttempt(
            id=uuid.uuid4(),
            bill_id=bill.id,
            channel=channel,
            mode="qr" if channel == "alipay" else "bank",
            status=status,
            amount=amount or bill.principal_amount,
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
        )
        s.add(a)
        await s.commit()
        return a


async def bank_confirm(ctx: PaymentContext, channel: str, msg: dict[str, Any]) -> t.BankAnswer:
    """A verified bank confirmation body, answered as the bank would read it: the bank's
    decoder, the channel-agnostic service and the bank's encoder (no HTTP, no signature)."""
    return bank_wire.encode(await inbound.handle(ctx, channel, bank_wire.decode("confirm", msg)))
