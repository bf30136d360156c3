"""The worker reconciles every channel with a statement each morning, once for all workers.

Two workers with their own connection pools and channel clients (two machines, as far as
PostgreSQL and the channels can tell) run the job at the same moment: each channel is
reconciled exactly once. A channel whose acquirer is down is recorded FAILED, waits, is
retried and succeeds; after its bounded tries it is left to a person. The channels are the
simulators over real HTTP (a TCP proxy cuts the kiosks' acquirer off); real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from channels.bank.adapter import BankAdapter
from channels.base import ChannelRegistry
from channels.kiosk.adapter import KioskAdapter
from channels.pos.adapter import PosAdapter
from gateway.db import create_engine, session_factory
from gateway.state import Resources
from gateway.worker import Job, reconcile_daily_job, run_once
from kernel.clock import SHANGHAI
from settlement.models import ReconRun
from tests.kiosk_support import ACQUIRER_SECRET, KioskWorld
from tests.payments_support import BankWorld, bill_for_test
from tests.servers import ServerThread
from tests.tcp_proxy import TcpProxy

TODAY = datetime.now(SHANGHAI).date()


def at(day: date, hh: int, mm: int = 0) -> Callable[[], datetime]:
    """A worker clock fixed at a local time (Asia/Shanghai)."""
    return lambda: datetime.combine(day, time(hh, mm), SHANGHAI)


def registry(kiosk_url: str, world: BankWorld | None = None) -> ChannelRegistry:
    """A worker's own channel clients: the kiosks' acquirer, the banks, and card terminals
    with no acquirer configured (no statement: never reconciled)."""
    channels = ChannelRegistry()
    channels.register(KioskAdapter(acquirer_url=kiosk_url, acquirer_secret=ACQUIRER_SECRET))
    for bank in world.settings.payments.banks if world else ():
        channels.register(
            BankAdapter(bank_code=bank.code, secret=bank.secret, base_url=bank.base_url)
        )
    channels.register(PosAdapter())
    return channels


async def close(channels: ChannelRegistry) -> None:
    for name in channels.names():
        closer = getattr(channels.get(name), "aclose", None)
        if closer is not None:
            await closer()


async def runs(res: Resources) -> list[tuple[str, str]]:
    async with res.sessions() as s:
        rows = await s.execute(
            select(ReconRun.channel, ReconRun.status).order_by(ReconRun.channel, ReconRun.id)
        )
        return [(c, st) for c, st in rows.all()]


@pytest.fixture
async def second_machine(res: Resources) -> AsyncIterator[Resources]:
    """Another worker's resources: its own engine (pool) on the same database."""
    assert res.settings.database.url is not None
    engine = create_engine(res.settings.database.url, res.settings.database)
    yield replace(res, engine=engine, sessions=session_factory(engine))
    await engine.dispose()


async def test_two_workers_reconcile_each_channel_once(
    res: Resources,
    second_machine: Resources,
    kiosk_world: KioskWorld,
    world: BankWorld,
    kiosk_simulator: ServerThread,
) -> None:
    async with res.sessions() as s:
        kiosk_bill = (await bill_for_test(s, amount=1_200))[2]
        bank_bill = (await bill_for_test(s, amount=3_400))[2]
    dev = f"K-{secrets.token_hex(4)}"
    await kiosk_world.register(dev)
    await kiosk_world.pay(dev, kiosk_bill.payment_code)
    await world.customer_pays("102", bank_bill.payment_code)

    acquirer = f"{kiosk_simulator.url}/acquirer"
    one = replace(res, channels=registry(acquirer, world))
    two = replace(second_machine, channels=registry(acquirer, world))
    expected = sorted(n for n in one.channels.names() if n != "pos")
    assert {"kiosk", "bank:102"} <= set(expected)
    try:
        # Before the configured time (09:30 by default): nothing.
        early = reconcile_daily_job(clock=at(TODAY + timedelta(days=1), 9, 0))
        assert await run_once(one, [early]) == {early.name: 0}
        assert await runs(res) == []

        # The next morning, two workers at once: today is the previous business day.
        job = reconcile_daily_job(clock=at(TODAY + timedelta(days=1), 9, 45))
        a, b = await asyncio.gather(run_once(one, [job]), run_once(two, [job]))
        assert a[job.name] + b[job.name] == len(expected)
        assert await runs(res) == [(name, "DONE") for name in expected]

        # Later runs, on either worker, redo nothing.
        for worker in (one, two, one):
            assert await run_once(worker, [job]) == {job.name: 0}
        assert await runs(res) == [(name, "DONE") for name in expected]
        async with res.sessions() as s:
            done = {r.channel: r for r in await s.scalars(select(ReconRun))}
        assert {r.business_date for r in done.values()} == {TODAY}
        # Our payments matched each channel's statement line.
        assert done["kiosk"].counts["matched"] >= 1
        assert done["bank:102"].counts["matched"] >= 1
    finally:
        await close(one.channels)
        await close(two.channels)


def _job(res: Resources, *, retry_s: int, tries: int) -> tuple[Resources, Job]:
    settlement = replace(res.settings.settlement, reconcile_retry_s=retry_s, reconcile_tries=tries)
    settings = replace(res.settings, settlement=settlement)
    job = reconcile_daily_job(clock=at(TODAY + timedelta(days=1), 10, 0))
    return replace(res, settings=settings), job


async def test_a_channel_down_is_retried_later_and_then_reconciled(
    res: Resources, kiosk_simulator: ServerThread
) -> None:
    target = urlsplit(kiosk_simulator.url)
    assert target.port is not None
    with TcpProxy(("127.0.0.1", target.port)) as proxy:
        worker, job = _job(res, retry_s=2, tries=3)
        worker = replace(worker, channels=registry(f"http://127.0.0.1:{proxy.port}/acquirer"))
        try:
            proxy.cut()  # the acquirer is down
            assert await run_once(worker, [job]) == {job.name: 0}
            assert await runs(res) == [("kiosk", "FAILED")]
            async with res.sessions() as s:
                failed = await s.scalar(select(ReconRun))
            assert failed is not None
            assert failed.error

            proxy.restore()
            # Not yet: the retry waits.
            assert await run_once(worker, [job]) == {job.name: 0}
            assert await runs(res) == [("kiosk", "FAILED")]
            await asyncio.sleep(2.2)
            assert await run_once(worker, [job]) == {job.name: 1}
            assert await runs(res) == [("kiosk", "FAILED"), ("kiosk", "DONE")]
            assert await run_once(worker, [job]) == {job.name: 0}
            assert await runs(res) == [("kiosk", "FAILED"), ("kiosk", "DONE")]
        finally:
            await close(worker.channels)


async def test_tries_are_bounded(res: Resources, kiosk_simulator: ServerThread) -> None:
    target = urlsplit(kiosk_simulator.url)
    assert target.port is not None
    with TcpProxy(("127.0.0.1", target.port)) as proxy:
        worker, job = _job(res, retry_s=0, tries=2)
        worker = replace(worker, channels=registry(f"http://127.0.0.1:{proxy.port}/acquirer"))
        try:
            proxy.cut()
            for _ in range(4):
                assert await run_once(worker, [job]) == {job.name: 0}
            assert await runs(res) == [("kiosk", "FAILED")] * 2
            proxy.restore()  # back, but the day is now a person's to rerun
            assert await run_once(worker, [job]) == {job.name: 0}
            assert await runs(res) == [("kiosk", "FAILED")] * 2
        finally:
            await close(worker.channels)
