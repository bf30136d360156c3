"""Process-wide resources the app opens at start-up and closes at shutdown."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing.late_fee import DayCount
from channels.bank.adapter import BankAdapter
from channels.bank.inbound import BankInbound
from channels.bank.registry import BankDirectory, BankEntry
from channels.bank.signing import HmacSigning
from channels.base import ChannelRegistry, InboundRegistry
from channels.pos.inbound import PosInbound
from gateway.db import create_engine, session_factory
from gateway.limits import Limiter
from gateway.settings import Settings
from kernel import crypto
from kernel.kv import KV
from kiosks import devices as kiosk_devices
from payments import ways
from payments.confirm import APPLY_GROUPS, CONFIRM_GATE
from payments.context import PaymentContext
from payments.pos import terminals

__all__ = [
    "Resources",
    "build_channels",
]


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: KV
    channels: ChannelRegistry

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        if settings.database.url is None or settings.redis.url is None:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before opening")
        crypto.configure(settings.crypto)  # a missing/bad data key fails here, at start-up
        engine = create_engine(settings.database.url, settings.database)
        CONFIRM_GATE.resize(settings.database.confirm_concurrency)
        APPLY_GROUPS.resize(settings.database.confirm_concurrency)
        redis = KV.from_url(
            settings.redis.url,
            timeout=settings.redis.timeout_s,
            breaker_s=settings.redis.breaker_s,
        )
        return cls(settings, engine, session_factory(engine), redis, build_channels(settings))

    @cached_property
    def banks(self) -> BankDirectory:
        """The registered banks (database), with PAYGATE_BANKS as the bootstrap."""
        bootstrap = {
            b.code: BankEntry(b.code, f"bank {b.code}", b.base_url, True, HmacSigning(b.secret))
            for b in self.settings.payments.banks
        }
        return BankDirectory(self.sessions, bootstrap, channels=self.channels)

    @cached_property
    def inbound(self) -> InboundRegistry:
        """The channels that call us, by the name in `/v1/channels/{channel}/{operation}`:
        built once, on first use."""
        registry = InboundRegistry()
        registry.register(BankInbound(self.banks))
        registry.register(PosInbound(functools.partial(terminals.credentials, self.sessions)))
        kiosk = self.settings.payments.kiosk
        if kiosk.enabled:
            from channels.kiosk.inbound import KioskInbound
            from enotes.signing import load_signer
            from kiosks import devices
            from kiosks import kiosk as kiosk_service

            kiosk_service.install()
            registry.register(
                KioskInbound(
                    devices.DeviceDirectory(self.engine, kiosk.key_cache_s),
                    load_signer(kiosk.sm2_key, kiosk.key_dir / "platform.pem", ""),
                )
            )
        return registry

    @cached_property
    def limiter(self) -> Limiter:
        """The public lookups' rate limits (Redis, else this process's memory)."""
        return Limiter(self.redis)

    @cached_property
    def day_count(self) -> DayCount:
        """How overdue days are counted (the configured grace days), for every amount due."""
        return DayCount(self.settings.billing.late_fee_grace_days)

    @cached_property
    def _payment_context(self) -> PaymentContext:
        pay = self.settings.payments
        return PaymentContext(
            sessions=self.sessions,
            redis=self.redis,
            channels=self.channels,
            public_url=self.settings.server.public_url,
            attempt_ttl_s=pay.attempt_ttl_s,
            first_check_s=pay.first_check_s,
            cutoff=self.settings.settlement.cutoff,
            day_count=self.day_count,
            summary_cache_ttl_s=pay.summary_cache_ttl_s,
        )

    async def pay_ways(self, session: AsyncSession, agency_id: UUID) -> ways.PayWays:
        """The ways a payer of the agency's bills can pay now: the facts gathered here,
        the decision in payments.ways."""
        kiosk_channel = self.settings.payments.kiosk.enabled
        facts = ways.Configured(
            alipay=self.settings.alipay.enabled,
            banks=tuple(ways.BankFacts(b.code, b.name, b.enabled) for b in await self.banks.all()),
            kiosk_channel=kiosk_channel,
            kiosk_devices=await kiosk_devices.enabled_count(session) if kiosk_channel else 0,
            pos_terminals=await terminals.enabled_count(session, agency_id),
        )
        return ways.pay_ways(facts)

    def payment_context(self) -> PaymentContext:
        """What the payment services need, without the web layer (built once: its parts
        are fixed once the resources are open)."""
        return self._payment_context

    async def close(self) -> None:
        for name in self.channels.names():
            close = getattr(self.channels.get(name), "aclose", None)
            if close is not None:
                await close()
        await self.redis.aclose()
        await self.engine.dispose()


def build_channels(settings: Settings) -> ChannelRegistry:
    """Channel name → adapter, built once per process from settings."""
    registry = ChannelRegistry()
    if settings.alipay.enabled:
        from channels.alipay.adapter import AlipayAdapter

        registry.register(AlipayAdapter(settings.alipay))
    # Banks (docs/channels/bank.md): one channel per bank, `bank:<code>`.
    for bank in settings.payments.banks:
        registry.register(
            BankAdapter(bank_code=bank.code, secret=bank.secret, base_url=bank.base_url)
        )
    # Card terminals (docs/channels/pos.md): the worker closes a sale's expired open attempt;
    # refunds and the settlement file go through their acquirer when one is configured.
    from channels.pos.adapter import PosAdapter

    acquirer = settings.payments.pos_acquirer
    if settings.is_production and acquirer.enabled and not acquirer.secret:
        raise RuntimeError("PAYGATE_POS_ACQUIRER_SECRET must be set with its URL")
    registry.register(PosAdapter(acquirer_url=acquirer.url, acquirer_secret=acquirer.secret))
    kiosk = settings.payments.kiosk
    if kiosk.enabled:
        from channels.kiosk.adapter import KioskAdapter

        if settings.is_production and not (kiosk.sm2_key and kiosk.acquirer_secret):
            raise RuntimeError("PAYGATE_KIOSK_SM2_KEY and _ACQUIRER_SECRET must be set")
        registry.register(
            KioskAdapter(acquirer_url=kiosk.acquirer_url, acquirer_secret=kiosk.acquirer_secret)
        )
    return registry
