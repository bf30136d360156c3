"""Test fixtures: real PostgreSQL and Redis — the machine's when DATABASE_URL/REDIS_URL are
set, otherwise the embedded ones, started once per session in var/test/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from gateway import embedded, migrate
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from tests.payments_support import (  # noqa: F401 - fixtures for payment tests, started lazily
    bank_channels,
    bank_settings,
    gateway_server,
    simulator,
    world,
)

ROOT = Path(__file__).resolve().parent.parent

# Channel fixtures (simulators over real HTTP) live in their own modules.
pytest_plugins = ["tests.alipay_support", "tests.alipay_e2e_support", "tests.kiosk_support"]


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    db_url = os.environ.get("DATABASE_URL") or None
    redis_url = os.environ.get("REDIS_URL") or None
    services = embedded.start(
        None if db_url else ROOT / "var/test/pg",
        None if redis_url else ROOT / "var/test/redis",
    )
    # Exported so that subprocesses started by tests join the same servers.
    os.environ["DATABASE_URL"] = db_url or services.database_url or ""
    os.environ["REDIS_URL"] = redis_url or services.redis_url or ""
    os.environ.setdefault("PAYGATE_LOG_FORMAT", "json")
    # Test webhook receivers listen on loopback, which production delivery refuses.
    os.environ.setdefault("PAYGATE_WEBHOOK_ALLOW_PRIVATE", "1")
    migrate.upgrade(os.environ["DATABASE_URL"])
    yield Settings.from_env()
    services.stop()


@pytest.fixture(scope="session")
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    res = Resources.open(settings)
    yield res
    await res.close()


@pytest.fixture
async def res(resources: Resources) -> Resources:
    """Resources with every table emptied and Redis flushed before the test."""
    tables = ", ".join(f'"{t.name}"' for t in migrate.target_metadata().sorted_tables)
    async with resources.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    await resources.redis.flushdb()
    return resources


@pytest.fixture
def app(settings: Settings, res: Resources) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as c:
        yield c
