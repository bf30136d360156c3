"""Serial allocation for payment codes: one counter row per region and year.

A batch takes a contiguous block of counter values with a single upsert … RETURNING,
and each value goes through the keyed permutation (billing.payment_code) so that
serials are unique per region-year but not guessable from a neighbour.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from billing.payment_code import SerialPermutation, compose
from kernel.crypto import KeyConfigError

__all__ = [
    "allocate",
    "load_serial_key",
    "payment_codes",
]

_ALLOCATE = text(
    "INSERT INTO payment_code_counters (region_code, year, next_value)"
    " VALUES (:region, :year, :n)"
    " ON CONFLICT (region_code, year)"
    " DO UPDATE SET next_value = payment_code_counters.next_value + EXCLUDED.next_value"
    " RETURNING next_value"
)


def load_serial_key(env: dict[str, str] | None = None) -> bytes:
    """`PAYGATE_SERIAL_KEY` (base64, ≥ 16 bytes); outside production generated under var/keys."""
    env = dict(os.environ) if env is None else env
    raw = env.get("PAYGATE_SERIAL_KEY", "").strip()
    if raw:
        key = base64.b64decode(raw)
    elif env.get("PAYGATE_ENV", "development") == "production":
        raise KeyConfigError("PAYGATE_SERIAL_KEY must be set in production")
    else:
        path = Path(env.get("PAYGATE_KEY_DIR", "var/keys")) / "serial.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process created it first
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
        key = path.read_bytes()
    if len(key) < 16:
        raise ValueError("PAYGATE_SERIAL_KEY must be at least 16 bytes")
    return key


async def allocate(session: AsyncSession, region: str, year: int, count: int) -> range:
    """Reserve `count` consecutive counter values for region-year in the caller's txn."""
    if count <= 0:
        return range(0)
    end = (
        await session.execute(_ALLOCATE, {"region": region, "year": year, "n": count})
    ).scalar_one()
    return range(int(end) - count, int(end))


def payment_codes(
    key: bytes, region: str, year: int, categories: list[str], counters: range
) -> list[str]:
    perm = SerialPermutation(key)
    tweak = f"{region}{year % 100:02d}".encode()
    return [
        compose(region, year, cat, perm.encode(n, tweak))
        for cat, n in zip(categories, counters, strict=True)
    ]
