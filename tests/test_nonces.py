"""The one nonce store (kernel.nonces): accepted once; with Redis down the check fails over
to PostgreSQL (never open), for agency signatures and bank messages alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from gateway.state import Resources
from kernel import nonces
from kernel.kv import KV
from payments import inbound as bank_inbound


@pytest.fixture
async def dead_redis() -> AsyncIterator[KV]:
    dead = KV.from_url("redis://127.0.0.1:9/0", connect_timeout=0.5)
    try:
        yield dead
    finally:
        await dead.aclose()


async def test_a_nonce_is_accepted_once_per_scope(res: Resources) -> None:
    n = uuid.uuid4().hex
    assert await nonces.first_use(res.redis, res.sessions, "k1", n, 60) is True
    assert await nonces.first_use(res.redis, res.sessions, "k1", n, 60) is False
    assert await nonces.first_use(res.redis, res.sessions, "bank:102", n, 60) is True
    assert await res.redis.exists(nonces.redis_key("k1", n))


async def test_redis_down_fails_over_to_postgres_and_stays_spent_after(
    res: Resources, dead_redis: KV
) -> None:
    n = uuid.uuid4().hex
    assert await nonces.first_use(dead_redis, res.sessions, "bank:102", n, 60) is True
    assert await nonces.first_use(dead_redis, res.sessions, "bank:102", n, 60) is False
    async with res.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT key_id, nonce FROM auth_nonces"))).all()
    assert [tuple(r) for r in rows] == [("bank:102", n)]
    # Redis is back: the nonce spent during the outage is spent there too.
    assert await nonces.first_use(res.redis, res.sessions, "bank:102", n, 60) is False
    assert await res.redis.exists(nonces.redis_key("bank:102", n))


async def test_a_bank_message_replayed_while_redis_is_down_is_refused(
    res: Resources, dead_redis: KV
) -> None:
    """Before the one store, the bank's check let every nonce through while Redis was down
    (trusting the timestamp window alone)."""
    n = uuid.uuid4().hex
    assert await bank_inbound.nonce_fresh(dead_redis, res.sessions, "102", n) is True
    assert await bank_inbound.nonce_fresh(dead_redis, res.sessions, "102", n) is False
    assert await bank_inbound.nonce_fresh(dead_redis, res.sessions, "103", n) is True


async def test_expired_nonces_are_purged(res: Resources) -> None:
    async with res.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO auth_nonces (key_id, nonce, expires_at) VALUES"
                " ('k', 'old', now() - interval '1 second'),"
                " ('k', 'live', now() + interval '1 minute')"
            )
        )
    assert await nonces.purge(res.sessions) == 1
    async with res.engine.connect() as conn:
        left = (await conn.execute(text("SELECT nonce FROM auth_nonces"))).scalars().all()
    assert left == ["live"]
