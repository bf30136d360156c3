"""Bare Litestar endpoints: the baselines our endpoints are measured against."""

from __future__ import annotations

from litestar import Litestar, get


@get("/health/live", cache=False)
async def live() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> Litestar:
    return Litestar(route_handlers=[live], logging_config=None, debug=False)
