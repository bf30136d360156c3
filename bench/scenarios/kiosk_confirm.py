"""Kiosk confirmations/s through `POST /v1/channels/kiosk/confirm` vs. one bare INSERT.

Each request is a real kiosk confirmation (HMAC-signed by its device, with the order id a
query opened and the device's next sequence number) for a bill of its own: the service
finds the device and its key (kept PAYGATE_KIOSK_KEY_CACHE_S per process), verifies,
checks the nonce in Redis, records the sequence number (gaps closed) and reads the order
in one statement shared by the devices confirming meanwhile, pays by payments.confirm's
grouped one-statement path and answers with the receipt slip, made from the facts in
hand. Devices are many (as kiosks are: each serves one payer at a time), and the messages
are signed before the load starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

from sqlalchemy import text

from bench.payments_support import AMOUNT, confirm_scenario
from bench.runner import Row
from channels.kiosk import transforms as t
from channels.money import fen_to_yuan
from gateway.db import create_engine
from kernel.audit import Actor
from kiosks import devices

DEVICES = 64
_OPEN_ATTEMPTS = text(
    "INSERT INTO payment_attempts (id, bill_id, channel, mode, status, amount, expires_at)"
    " SELECT gen_random_uuid(), b.id, 'kiosk', 'kiosk', 'PENDING', b.principal_amount,"
    " now() + interval '1 hour' FROM bills b WHERE b.payment_code = ANY(:codes)"
    " RETURNING id, (SELECT payment_code FROM bills WHERE id = bill_id)"
)


async def _register(prefix: str) -> dict[str, bytes]:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_engine(os.environ["DATABASE_URL"])
    secrets_by_device: dict[str, bytes] = {}
    async with async_sessionmaker(engine)() as s:
        for i in range(DEVICES):
            issued = await devices.register(
                s,
                device_id=f"{prefix}-{i:03d}",
                hall="市民中心一楼大厅",
                region_code="330100",
                acquirer_merchant_id="898330170110001",
                acquirer_terminal_id=f"K{i:07d}",
                owner_hall="市民中心",
                actor=Actor("system", "bench"),
            )
            assert issued.secret is not None
            secrets_by_device[issued.device.id] = issued.secret.encode()
        await s.commit()
    await engine.dispose()
    return secrets_by_device


async def _open_attempts(codes: list[str]) -> list[tuple[str, str]]:
    engine = create_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as conn:
        rows = (await conn.execute(_OPEN_ATTEMPTS, {"codes": codes})).all()
    await engine.dispose()
    return [(str(r[0]), str(r[1])) for r in rows]


class Kiosks:
    """The bench's devices and their next sequence numbers."""

    def __init__(self) -> None:
        self.keys = asyncio.run(_register(f"B{secrets.token_hex(3)}"))
        self.seqs = {d: count(1) for d in self.keys}

    def requests(self, codes: list[str], path: Path) -> Path:
        ids = list(self.keys)
        paid_at = t.format_time(datetime.now(UTC))
        with path.open("w") as f:
            for n, (order_id, code) in enumerate(asyncio.run(_open_attempts(codes))):
                device = ids[n % len(ids)]
                body = json.dumps(
                    {
                        "seq": next(self.seqs[device]),
                        "order_id": order_id,
                        "payment_code": code,
                        "amount": fen_to_yuan(AMOUNT),
                        "paid_at": paid_at,
                        "acquirer_ref": f"{secrets.randbelow(10**12):012d}",
                        "method": "CARD",
                        "card": "622202******1234",
                    },
                    separators=(",", ":"),
                )
                headers = t.request_headers(
                    "confirm", device, body.encode(), secret=self.keys[device]
                )
                request = {
                    "method": "POST",
                    "path": "/v1/channels/kiosk/confirm",
                    "headers": headers,
                    "body": body,
                }
                f.write(json.dumps(request) + "\n")
        return path


def run(*, quick: bool) -> list[Row]:
    kiosks = Kiosks()
    with tempfile.TemporaryDirectory() as keydir:
        server_env = {
            # Never called: a confirmation needs no round trip to the acquirer.
            "PAYGATE_KIOSK_ACQUIRER_URL": "http://127.0.0.1:9/acquirer",
            "PAYGATE_KIOSK_ACQUIRER_SECRET": secrets.token_hex(32),
            "PAYGATE_KIOSK_KEY_DIR": keydir,
        }
        return confirm_scenario(
            "kiosk_confirm", quick=quick, server_env=server_env, make_requests=kiosks.requests
        )
