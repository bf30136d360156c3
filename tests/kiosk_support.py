"""Kiosk fixtures: the kiosk/acquirer simulator and our service on real ports.

Everything is real: uvicorn (httptools) on 127.0.0.1, real PostgreSQL and Redis; devices are
registered through the registry service and loaded into the simulator with their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.base import ChannelRegistry
from channels.kiosk import transforms as t
from channels.kiosk.adapter import KioskAdapter
from channels.kiosk.simulator import create_app as create_simulator
from enotes.signing import SM2Signer
from gateway.app import create_app
from gateway.settings import KioskSettings, Settings
from gateway.state import Resources
from kernel.audit import Actor
from kiosks import devices
from payments.context import PaymentContext
from tests.servers import ServerThread

ACQUIRER_SECRET = hashlib.sha256(b"paygate-test-kiosk-acquirer").hexdigest().encode()
PLATFORM = SM2Signer.generate()
"""The platform's kiosk key for the tests (answers to SM2 devices are signed with it)."""
ADMIN = Actor("finance", "test")


def platform_public_pem() -> str:
    from tongsuopy.crypto import serialization

    public = PLATFORM._public
    return str(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )


@pytest.fixture(scope="session")
def kiosk_simulator() -> Iterator[ServerThread]:
    with ServerThread(create_simulator(ACQUIRER_SECRET)) as server:
        yield server


@pytest.fixture(scope="session")
def kiosk_settings(
    settings: Settings, kiosk_simulator: ServerThread, tmp_path_factory: Any
) -> Settings:
    kiosk = KioskSettings(
        acquirer_url=f"{kiosk_simulator.url}/acquirer",
        acquirer_secret=ACQUIRER_SECRET,
        sm2_key=PLATFORM.pem().decode(),
        key_dir=Path(tmp_path_factory.mktemp("kiosk")),
        key_cache_s=0,  # a disable or rotation is seen by the very next message
    )
    return replace(settings, payments=replace(settings.payments, kiosk=kiosk))


@pytest.fixture(scope="session")
def kiosk_gateway(kiosk_settings: Settings) -> Iterator[ServerThread]:
    with ServerThread(create_app(kiosk_settings)) as server:
        yield server


@pytest.fixture(scope="session")
async def kiosk_channels(kiosk_settings: Settings) -> AsyncIterator[ChannelRegistry]:
    cfg = kiosk_settings.payments.kiosk
    adapter = KioskAdapter(acquirer_url=cfg.acquirer_url, acquirer_secret=cfg.acquirer_secret)
    registry = ChannelRegistry()
    registry.register(adapter)
    yield registry
    await adapter.aclose()


@dataclass
class KioskWorld:
    simulator_url: str
    gateway_url: str
    ctx: PaymentContext
    res: Resources

    async def register(
        self, device_id: str, *, sm2: bool = False, load: bool = True, **kw: Any
    ) -> devices.Issued:
        private_pem = public_pem = None
        if sm2:
            private_pem, public_pem = t.sm2_keypair()
        async with self.res.sessions() as s:
            issued = await devices.register(
                s,
                device_id=device_id,
                hall="市民中心一楼大厅",
                region_code="330100",
                acquirer_merchant_id="898330170110001",
                acquirer_terminal_id="K0000001",
                sign_alg="SM2" if sm2 else "HMAC",
                public_key=public_pem,
                owner_hall="市民中心",
                actor=ADMIN,
                **kw,
            )
            await s.commit()
        if load:
            await self.load(device_id, secret=issued.secret, private_pem=private_pem)
        return issued

    async def load(
        self, device_id: str, *, secret: str | None = None, private_pem: str | None = None
    ) -> None:
        await self._control(
            "devices",
            {
                "device_id": device_id,
                "secret": secret,
                "private_pem": private_pem,
                "platform_public_pem": platform_public_pem(),
            },
        )

    async def _control(self, path: str, payload: dict[str, Any]) -> Any:
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.post(f"{self.simulator_url}/control/{path}", json=payload)
            r.raise_for_status()
            return r.json()

    async def pay(self, device_id: str, payment_code: str, **switches: Any) -> Any:
        return await self._control(
            f"{device_id}/pay",
            {"payment_code": payment_code, "gateway_url": self.gateway_url, **switches},
        )

    async def upload(self, device_id: str, **switches: Any) -> Any:
        return await self._control(
            f"{device_id}/upload", {"gateway_url": self.gateway_url, **switches}
        )

    async def heartbeat(self, device_id: str) -> Any:
        return await self._control(f"{device_id}/heartbeat", {"gateway_url": self.gateway_url})

    async def reprint(self, device_id: str, seq: int) -> Any:
        return await self._control(
            f"{device_id}/reprint", {"gateway_url": self.gateway_url, "seq": seq}
        )

    async def acquirer(self) -> Any:
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.get(f"{self.simulator_url}/control/acquirer")
            r.raise_for_status()
            return r.json()


@pytest.fixture
def kiosk_world(
    res: Resources,
    kiosk_simulator: ServerThread,
    kiosk_gateway: ServerThread,
    kiosk_channels: ChannelRegistry,
) -> KioskWorld:
    ctx = PaymentContext(
        sessions=res.sessions,
        redis=res.redis,
        channels=kiosk_channels,
        public_url=kiosk_gateway.url,
    )
    return KioskWorld(kiosk_simulator.url, kiosk_gateway.url, ctx, res)
