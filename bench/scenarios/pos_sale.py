"""Card terminal sales/s through `POST /v1/channels/pos/sale` vs. one bare INSERT.

Each request is a sale signed with a registered terminal's key, for a bill of its own: the
service looks the terminal up (its key kept a few seconds per process), verifies the HMAC,
spends the nonce in Redis, then records the transaction, opens its attempt and pays the
bill (receipt, bill event, audit, ledger, outbox) in ONE statement shared by the sales
that arrive meanwhile, its guards judging the bill and the amount in SQL. Sales are signed
just before each load, so signing costs the load generator nothing. The baseline protocol
is bench.payments_support's (before and after, p99 at 8 and 16 connections).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from bench.payments_support import AMOUNT, confirm_scenario
from bench.runner import Row
from channels.money import fen_to_yuan
from channels.pos import transforms as t
from gateway.db import create_engine
from kernel.audit import Actor

_TERMINAL: dict[str, str] = {}
_BATCH = [0]


async def _register(code: str) -> None:
    """A terminal of the seeded bills' agency, new for this run (the bench DB keeps runs)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from payments.pos import terminals

    engine = create_engine(os.environ["DATABASE_URL"])
    async with engine.connect() as conn:
        agency_id = await conn.scalar(
            text("SELECT agency_id FROM bills WHERE payment_code = :c"), {"c": code}
        )
    assert isinstance(agency_id, uuid.UUID)
    merchant = "".join(secrets.choice("0123456789") for _ in range(15))
    terminal = "B" + "".join(secrets.choice("0123456789ABCDEF") for _ in range(7))
    async with async_sessionmaker(engine)() as s:
        made = await terminals.register(
            s,
            merchant_id=merchant,
            terminal_id=terminal,
            agency_id=agency_id,
            counter="bench",
            actor=Actor("admin", "bench"),
        )
        await s.commit()
    await engine.dispose()
    _TERMINAL.update(merchant=merchant, terminal=terminal, key=made.key)


def sales(codes: list[str], path: Path) -> Path:
    """One signed sale per bill, each under its own batch and trace number."""
    if not _TERMINAL:
        asyncio.run(_register(codes[0]))
    merchant, terminal, key = _TERMINAL["merchant"], _TERMINAL["terminal"], _TERMINAL["key"]
    now = datetime.now(UTC)
    url_path = "/v1/channels/pos/sale"
    with path.open("w") as f:
        _BATCH[0] += 1
        for i, code in enumerate(codes, start=1):
            body = json.dumps(
                {
                    "payment_code": code,
                    "amount": fen_to_yuan(AMOUNT),
                    "currency": t.CURRENCY_CNY,
                    "batch_no": f"{_BATCH[0]:06d}",
                    "trace_no": f"{i:06d}",
                    "rrn": f"{secrets.randbelow(10**12):012d}",
                    "card": "622848******1234",
                    "card_type": "DEBIT",
                    "acquirer": "01020000",
                    "issuer": "01030000",
                    "time": t.format_time(now),
                    "settle_date": now.astimezone(t.SHANGHAI).strftime("%m%d"),
                    "operator": "01",
                },
                separators=(",", ":"),
            )
            headers = t.sign(key.encode(), "POST", url_path, merchant, terminal, body.encode())
            headers["Content-Type"] = "application/json"
            f.write(
                json.dumps({"method": "POST", "path": url_path, "headers": headers, "body": body})
            )
            f.write("\n")
    return path


def run(*, quick: bool) -> list[Row]:
    _TERMINAL.clear()
    _BATCH[0] = 0
    return confirm_scenario("pos_sale", quick=quick, server_env={}, make_requests=sales)
