"""The pool without pre-ping: a connection the server dropped costs one failed statement."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db import create_engine
from gateway.settings import Settings


async def test_a_dropped_connection_fails_once_then_the_pool_recovers(settings: Settings) -> None:
    assert settings.database.url
    engine = create_engine(settings.database.url)
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        # The server ends that backend while it idles in the pool (a restart, a failover).
        killer = create_engine(settings.database.url)
        try:
            async with killer.connect() as other:
                stmt = text("SELECT pg_terminate_backend(:pid)")
                assert await other.scalar(stmt, {"pid": pid})
        finally:
            await killer.dispose()
        outcomes = []
        for _ in range(3):
            try:
                async with engine.connect() as conn:
                    outcomes.append(await conn.scalar(text("SELECT 1")))
            except DBAPIError as exc:
                outcomes.append("invalidated" if exc.connection_invalidated else "error")
        assert outcomes == ["invalidated", 1, 1]
    finally:
        await engine.dispose()
