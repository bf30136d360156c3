"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from sqlalchemy import text

from gateway.state import Resources

_TIMEOUT_S = 2.0


class HealthController(Controller):
    path = "/health"
    tags = ["health"]  # noqa: RUF012

    @get("/live", summary="The process is up", cache=False)
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Postgres and Redis answer", cache=False)
    async def ready(self, resources: NamedDependency[Resources]) -> Response[dict[str, Any]]:
        async def postgres() -> None:
            async with resources.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def redis() -> None:
            await resources.redis.ping()

        checks: dict[str, str] = {}
        for name, probe in (("postgres", postgres), ("redis", redis)):
            try:
                async with asyncio.timeout(_TIMEOUT_S):
                    await probe()
                checks[name] = "up"
            except Exception as exc:  # noqa: BLE001 - any failure means "down", reported by name
                checks[name] = f"down: {type(exc).__name__}"
        ok = all(v == "up" for v in checks.values())
        return Response(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )
