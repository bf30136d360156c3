"""Run Alembic programmatically (no alembic.ini needed on a production box)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData

__all__ = [
    "MIGRATION_LOCK_KEY",
    "downgrade",
    "target_metadata",
    "upgrade",
]

MIGRATION_LOCK_KEY = 0x7061_7967  # "payg"


def migrations_dir() -> Path:
    env = os.environ.get("PAYGATE_MIGRATIONS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "migrations"


def target_metadata() -> MetaData:
    """The metadata of every model module, for autogenerate and drift checks."""
    # Imported for their table definitions; each feature adds its model modules here.
    import billing.models
    import channels.bank.models
    import enotes.models
    import kernel.models
    import kiosks.models
    import ledger.models
    import payments.models
    import payments.pos.models
    import settlement.models
    from kernel.db import Base

    del billing, channels, enotes, kernel, ledger, payments, settlement, kiosks
    return Base.metadata


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    # Alembic's env runs its own event loop; keep it off the caller's.
    await asyncio.to_thread(upgrade, database_url, revision)
