"""Settings read from the environment into small typed, frozen dataclasses.

Every knob has a default that suits a laptop; production sets the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    return int(raw) if raw else default


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name).lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str | None
    """`DATABASE_URL`; None starts the embedded PostgreSQL."""
    embedded_dir: Path
    pool_size: int
    max_overflow: int
    echo: bool

    @classmethod
    def from_env(cls) -> DatabaseSettings:
        return cls(
            url=_env("DATABASE_URL") or None,
            embedded_dir=Path(_env("PAYGATE_PG_DIR", "var/pg")),
            pool_size=_env_int("PAYGATE_DB_POOL_SIZE", 10),
            max_overflow=_env_int("PAYGATE_DB_MAX_OVERFLOW", 10),
            echo=_env_bool("PAYGATE_DB_ECHO", False),
        )


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None
    """`REDIS_URL`; None starts the embedded Redis."""
    embedded_dir: Path

    @classmethod
    def from_env(cls) -> RedisSettings:
        return cls(
            url=_env("REDIS_URL") or None,
            embedded_dir=Path(_env("PAYGATE_REDIS_DIR", "var/redis")),
        )


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    workers: int
    public_url: str
    """Base URL citizens and channels reach us at (QR codes, notify URLs)."""

    @classmethod
    def from_env(cls) -> ServerSettings:
        host = _env("PAYGATE_HOST", "127.0.0.1")
        port = _env_int("PAYGATE_PORT", 8000)
        return cls(
            host=host,
            port=port,
            workers=_env_int("PAYGATE_WORKERS", 1),
            public_url=_env("PAYGATE_PUBLIC_URL", f"http://{host}:{port}").rstrip("/"),
        )


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    json: bool | None
    """None: JSON unless stderr is a terminal."""

    @classmethod
    def from_env(cls) -> LogSettings:
        fmt = _env("PAYGATE_LOG_FORMAT").lower()
        return cls(
            level=_env("PAYGATE_LOG_LEVEL", "INFO").upper(),
            json=None if not fmt else fmt == "json",
        )


def _fee_rates(raw: str) -> dict[str, int]:
    """`alipay:60,bank:0` → {"alipay": 60, "bank": 0} (basis points of the amount)."""
    rates: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, bp = part.partition(":")
        rates[name.strip()] = int(bp)
    return rates


@dataclass(frozen=True, slots=True)
class SettlementSettings:
    cutoff: time
    """`PAYGATE_DAY_CUTOFF` (HH:MM, Asia/Shanghai): payments at or after it belong to the
    next business day (日切). Local practice; default midnight."""
    hold_days: int
    """`PAYGATE_RECON_HOLD_DAYS`: platform-only records wait this long for a late file."""
    fee_rates_bp: dict[str, int]
    """`PAYGATE_FEE_RATES` (e.g. `alipay:60`): expected fee per channel in basis points;
    a channel not listed is not fee-checked."""

    @classmethod
    def from_env(cls) -> SettlementSettings:
        return cls(
            cutoff=time.fromisoformat(_env("PAYGATE_DAY_CUTOFF", "00:00")),
            hold_days=_env_int("PAYGATE_RECON_HOLD_DAYS", 3),
            fee_rates_bp=_fee_rates(_env("PAYGATE_FEE_RATES")),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings.from_env)
    redis: RedisSettings = field(default_factory=RedisSettings.from_env)
    server: ServerSettings = field(default_factory=ServerSettings.from_env)
    log: LogSettings = field(default_factory=LogSettings.from_env)
    settlement: SettlementSettings = field(default_factory=SettlementSettings.from_env)
    environment: str = field(default_factory=lambda: _env("PAYGATE_ENV", "development"))

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    @property
    def is_production(self) -> bool:
        return self.environment == "production"
