"""Migrations upgrade an empty database to a schema equal to the models, and back down."""

from __future__ import annotations

import asyncio
import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from gateway import migrate
from gateway.db import create_engine
from gateway.settings import Settings


def _diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, migrate.target_metadata()))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


async def test_upgrade_empty_database_then_downgrade(settings: Settings) -> None:
    assert settings.database.url
    name = f"paygate_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(settings.database.url)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(settings.database.url).set(database=name).render_as_string(hide_password=False)
    scratch = create_engine(url)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        async with scratch.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert "outbox" in await conn.run_sync(_tables)
        await asyncio.to_thread(migrate.downgrade, url, "base")
        async with scratch.connect() as conn:
            assert await conn.run_sync(_tables) == {"alembic_version"}
        # And up again: downgrade left nothing behind that blocks a re-run.
        await asyncio.to_thread(migrate.upgrade, url)
    finally:
        await scratch.dispose()
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()
