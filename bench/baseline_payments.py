"""Bare Litestar baselines for the payment scenarios: a JSON answer, one INSERT transaction."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, get, post
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import create_engine
from gateway.settings import DatabaseSettings

_state: dict[str, AsyncEngine] = {}


@get("/health/live", cache=False)
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/bill/{code:str}", cache=False)
async def bill(code: str) -> dict[str, Any]:
    # The same shape and size as our summary, from memory.
    return {
        "payment_code": code,
        "agency_name": "某市公安局交通警察支队",
        "payer_name": "张*",
        "status": "ISSUED",
        "payable": True,
        "principal": 20000,
        "late_fee": 0,
        "overdue_days": 0,
        "amount_due": 20000,
        "due_date": "2026-12-06",
        "expires_at": "2026-12-21T00:00:00Z",
        "items": [
            {
                "item_code": "103050101001-01",
                "name": "道路交通违法罚款",
                "quantity": 1,
                "unit_amount": 20000,
                "amount": 20000,
            }
        ],
        "refusal_code": None,
    }


@post("/insert", status_code=200)
async def insert_one(request: Request[Any, Any, Any]) -> dict[str, str]:
    body = await request.body()
    async with _state["engine"].begin() as conn:
        await conn.execute(
            text("INSERT INTO bench_baseline (body) VALUES (:b)"), {"b": body.decode()}
        )
    return {"code": "00000"}


@asynccontextmanager
async def lifespan(_: Litestar) -> AsyncIterator[None]:
    # Our service's engine settings (pool size included), so only the work per request differs.
    engine = create_engine(os.environ["DATABASE_URL"], DatabaseSettings.from_env())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_baseline"
                " (id bigserial PRIMARY KEY, body text, at timestamptz DEFAULT now())"
            )
        )
    _state["engine"] = engine
    yield
    await engine.dispose()


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[live, bill, insert_one], lifespan=[lifespan], logging_config=None
    )
