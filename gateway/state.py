"""Process-wide resources the app opens at start-up and closes at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.db import create_engine, session_factory
from gateway.settings import Settings


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: aioredis.Redis

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        if settings.database.url is None or settings.redis.url is None:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before opening")
        engine = create_engine(settings.database.url, settings.database)
        redis = aioredis.from_url(settings.redis.url, socket_timeout=5, health_check_interval=30)
        return cls(settings, engine, session_factory(engine), redis)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()
