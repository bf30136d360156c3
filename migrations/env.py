"""Alembic environment: async engine, one advisory lock so concurrent starts don't race."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.db import create_engine
from gateway.migrate import MIGRATION_LOCK_KEY, target_metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        # Held until the migration transaction ends; a second instance waits here and
        # then finds the schema already at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _main() -> None:
    engine = create_engine(config.attributes["database_url"])
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run against a database")

connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_main())
