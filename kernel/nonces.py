"""The one nonce store: a signed request's nonce is accepted once within its window, for
every caller (agency request signing, channels that call us).

Policy when Redis is down — the same for every caller, and never "accept unchecked":

1. Redis `SET NX EX` is the store (`paygate:nonce:<scope>:<nonce>`).
2. When Redis fails (error, timeout, connection refused), the nonce is recorded in
   PostgreSQL instead: a unique row in `auth_nonces` (scope, nonce, expiry). A replay during
   the outage hits the unique key and is refused. If PostgreSQL is down as well, the
   error propagates and the request fails (nothing else is done for it).
3. A nonce recorded in PostgreSQL stays spent once Redis is back: the process that recorded
   it writes it into Redis (remaining TTL) before its next check, and `seen_clause()` lets a
   caller that reads the database anyway (the agency key lookup) also consult the table in
   that same round trip.
4. The worker purges expired rows (`purge`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, Exists, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kernel.kv import KV
from kernel.models import AuthNonce

__all__ = ["first_use", "purge", "redis_key", "seen_clause"]

log = structlog.get_logger(__name__)

_SPENT_IN_OUTAGE: dict[tuple[str, str], datetime] = {}
"""Nonces this process recorded in PostgreSQL while Redis was down, with their expiry: put
into Redis once it answers again. Bounded by the TTL (expired ones are dropped)."""


def redis_key(scope: str, nonce: str) -> str:
    return f"paygate:nonce:{scope}:{nonce}"


async def first_use(
    redis: KV,
    sessions: async_sessionmaker[AsyncSession],
    scope: str,
    nonce: str,
    ttl_s: int,
) -> bool:
    """True the first time `nonce` is seen in `scope` within `ttl_s` seconds, else False.

    `scope` separates the callers (an agency key id; `<channel>` for a channel)."""
    try:
        if _SPENT_IN_OUTAGE:
            await _respend(redis)
        return bool(await redis.set(redis_key(scope, nonce), b"1", nx=True, ex=ttl_s))
    except (RedisError, OSError) as exc:
        log.warning("nonce store falling back to postgres", error=type(exc).__name__)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    async with sessions() as session, session.begin():
        row = await session.execute(
            text(
                "INSERT INTO auth_nonces (key_id, nonce, expires_at) VALUES (:k, :n, :e)"
                " ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {"k": scope, "n": nonce, "e": expires_at},
        )
        fresh = row.first() is not None
    if fresh:
        _SPENT_IN_OUTAGE[scope, nonce] = expires_at
    return fresh


async def _respend(redis: KV) -> None:
    """Redis answers again: mark the nonces recorded during the outage as spent there."""
    now = datetime.now(UTC)
    for (scope, nonce), expires_at in list(_SPENT_IN_OUTAGE.items()):
        left = int((expires_at - now).total_seconds())
        if left > 0:
            await redis.set(redis_key(scope, nonce), b"1", nx=True, ex=left)
        del _SPENT_IN_OUTAGE[scope, nonce]


def seen_clause(scope: str, nonce: str, now: datetime) -> Exists:
    """EXISTS: `nonce` was recorded in PostgreSQL during an outage and is still live."""
    live: ColumnElement[bool] = AuthNonce.expires_at > now
    return (
        select(AuthNonce.key_id)
        .where(AuthNonce.key_id == scope, AuthNonce.nonce == nonce, live)
        .exists()
    )


async def purge(sessions: async_sessionmaker[AsyncSession]) -> int:
    """Drop the recorded nonces whose window has passed (a worker job)."""
    async with sessions() as session, session.begin():
        res = await session.execute(text("DELETE FROM auth_nonces WHERE expires_at < now()"))
    return int(getattr(res, "rowcount", 0) or 0)
