"""Our service with the Alipay channel AND the simulated banks, on a real port.

`alipay_world` (function) gives an AlipayWorld: the service URL the simulators call
(notify_url = `{url}/v1/channels/alipay/notify`), Resources on the test database with the
same channels (for worker jobs and direct checks), the Alipay simulator and its own bank
simulator (bank `104`). Everything over real HTTP on 127.0.0.1; nothing mocked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from billing.models import Bill
from channels.bank.simulator import create_app as create_bank_simulator
from channels.base import ChannelRegistry
from gateway.app import create_app
from gateway.procs import free_port
from gateway.settings import BankSettings, Settings
from gateway.state import Resources, build_channels
from gateway.worker import close_jobs, default_jobs, run_once
from payments.context import PaymentContext
from payments.models import PaymentAttempt, Receipt, Refund
from tests.alipay_support import SimServer, settings_for
from tests.payments_support import bank_secret
from tests.servers import ServerThread

BANK = "104"
"""This world's own bank (and bank simulator): tests/test_bank_channel.py counts the refunds
the shared simulator's banks 102/103 hold, so nothing here may add to them."""


@dataclass(frozen=True)
class _Gateway:
    settings: Settings
    port: int


@dataclass
class AlipayWorld:
    url: str
    settings: Settings
    res: Resources
    sim: SimServer
    bank_sim_url: str

    @property
    def ctx(self) -> PaymentContext:
        return self.res.payment_context()

    # -------------------------------------------------------------- citizen / buyer

    async def start_attempt(
        self, payment_code: str, channel: str = "alipay", mode: str = "qr"
    ) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as c:
            r = await c.post(
                f"/v1/pay/{payment_code}/attempts", json={"channel": channel, "mode": mode}
            )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def control(self, method: str, path: str, data: Any = None) -> Any:
        status, body = self.sim.control(method, path, data)
        assert status == 200, (path, status, body)
        return body

    def buyer_pays(self, attempt_id: str, *, lose_notification: bool = False) -> Any:
        """Scan then pay in the simulator; optionally the network drops every delivery."""
        if lose_notification:
            self.control("POST", "/sim/notifications/next", {"fail": 8})
        self.control("POST", f"/sim/trades/{attempt_id}/scan", {})
        return self.control("POST", f"/sim/trades/{attempt_id}/pay", {})

    def signed_notification(self, attempt_id: str) -> dict[str, str]:
        """The last notification the simulator signed for this trade (its exact fields)."""
        notes = [n for n in self.sim.app.notifications if n.out_trade_no == attempt_id]
        assert notes, f"the simulator sent nothing for {attempt_id}"
        return dict(notes[-1].fields)

    async def bank_pays(self, bank_code: str, payment_code: str, **switches: Any) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(
                f"{self.bank_sim_url}/control/{bank_code}/pay",
                json={"payment_code": payment_code, "gateway_url": self.url, **switches},
            )
        r.raise_for_status()
        return r.json()

    async def bank_state(self, bank_code: str) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{self.bank_sim_url}/control/{bank_code}/state")
        r.raise_for_status()
        return r.json()

    # -------------------------------------------------------------- our side

    async def run_jobs(self, *names: str) -> dict[str, int]:
        """Run the named worker jobs (all when none) once, as the worker would."""
        jobs = [j for j in default_jobs() if not names or j.name in names]
        try:
            return await run_once(self.res, jobs)
        finally:
            await close_jobs(jobs)

    async def bill_status(self, bill_id: uuid.UUID) -> str:
        async with self.res.sessions() as s:
            return (await s.get_one(Bill, bill_id, populate_existing=True)).status

    async def counts(self, bill_id: uuid.UUID) -> tuple[str, int, int]:
        """(bill status, receipts, refunds) of one bill."""
        async with self.res.sessions() as s:
            status = await s.scalar(select(Bill.status).where(Bill.id == bill_id))
            receipts = await s.scalar(
                select(func.count()).select_from(Receipt).where(Receipt.bill_id == bill_id)
            )
            refunds = await s.scalar(
                select(func.count()).select_from(Refund).where(Refund.bill_id == bill_id)
            )
        return str(status), int(receipts or 0), int(refunds or 0)

    async def wait_receipts(self, bill_id: uuid.UUID, n: int, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while (await self.counts(bill_id))[1] < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} receipts; have {await self.counts(bill_id)}")
            await asyncio.sleep(0.05)

    async def make_due(self, attempt_id: str | uuid.UUID) -> None:
        """Time passes: the attempt's next recovery check is due now."""
        async with self.res.sessions() as s, s.begin():
            await s.execute(
                update(PaymentAttempt)
                .where(PaymentAttempt.id == uuid.UUID(str(attempt_id)))
                .values(next_check_at=datetime.now(UTC))
            )

    async def attempt(self, attempt_id: str | uuid.UUID) -> PaymentAttempt:
        async with self.res.sessions() as s:
            return await s.get_one(PaymentAttempt, uuid.UUID(str(attempt_id)))


@pytest.fixture(scope="session")
def _e2e_bank_simulator() -> Iterator[ServerThread]:
    with ServerThread(create_bank_simulator({BANK: bank_secret(BANK)})) as server:
        yield server


@pytest.fixture(scope="session")
def _alipay_gateway_settings(
    settings: Settings,
    alipay_keys: Any,
    alipay_sim: SimServer,
    _e2e_bank_simulator: ServerThread,
) -> _Gateway:
    port = free_port()
    bank = BankSettings(
        code=BANK, secret=bank_secret(BANK), base_url=f"{_e2e_bank_simulator.url}/banks/{BANK}"
    )
    settings = replace(
        settings,
        alipay=settings_for(alipay_keys, alipay_sim.gateway_url),
        payments=replace(settings.payments, banks=(bank,)),
        server=replace(settings.server, public_url=f"http://127.0.0.1:{port}"),
    )
    return _Gateway(settings, port)


@pytest.fixture(scope="session")
def alipay_gateway(_alipay_gateway_settings: _Gateway) -> Iterator[ServerThread]:
    """Our whole service (Alipay + banks) on the port its public_url names."""
    cfg = _alipay_gateway_settings
    with ServerThread(create_app(cfg.settings), port=cfg.port) as server:
        yield server


@pytest.fixture(scope="session")
async def _alipay_world_channels(
    _alipay_gateway_settings: _Gateway,
) -> AsyncIterator[ChannelRegistry]:
    registry = build_channels(_alipay_gateway_settings.settings)
    yield registry
    for name in registry.names():
        close = getattr(registry.get(name), "aclose", None)
        if close is not None:
            await close()


@pytest.fixture
def alipay_world(
    res: Resources,
    alipay_gateway: ServerThread,
    _alipay_gateway_settings: _Gateway,
    _alipay_world_channels: ChannelRegistry,
    alipay_sim: SimServer,
    _e2e_bank_simulator: ServerThread,
) -> AlipayWorld:
    settings = _alipay_gateway_settings.settings
    world_res = replace(res, settings=settings, channels=_alipay_world_channels)
    return AlipayWorld(
        url=settings.server.public_url,
        settings=settings,
        res=world_res,
        sim=alipay_sim,
        bank_sim_url=_e2e_bank_simulator.url,
    )
