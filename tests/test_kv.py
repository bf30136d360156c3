"""The pipelined Redis client against the real Redis: replies reach the right caller under
concurrency, errors keep their redis-py types, and a lost or stuck connection is replaced."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.settings import Settings
from kernel.kv import KV


@pytest.fixture
async def kv(settings: Settings) -> KV:
    assert settings.redis.url
    client = KV.from_url(settings.redis.url, timeout=2)
    yield client  # type: ignore[misc]
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(kv: KV) -> None:
    prefix = f"t:kv:{secrets.token_hex(4)}"
    values = {f"{prefix}:{n}": secrets.token_bytes(1 + n % 700) for n in range(500)}
    await asyncio.gather(*(kv.set(k, v, ex=60) for k, v in values.items()))
    keys = list(values)
    got = await asyncio.gather(*(kv.get(k) for k in keys))
    assert got == [values[k] for k in keys]
    assert await kv.exists(*keys[:3], f"{prefix}:absent") == 3
    assert await kv.delete(*keys) == len(keys)
    assert await kv.get(keys[0]) is None


async def test_set_nx_and_ex(kv: KV) -> None:
    key = f"t:kv:nx:{secrets.token_hex(4)}"
    assert await kv.set(key, b"1", nx=True, ex=30) is True
    assert await kv.set(key, b"2", nx=True, ex=30) is None
    assert await kv.get(key) == b"1"
    ttl = await kv.execute("TTL", key)
    assert 0 < ttl <= 30


async def test_errors_keep_redis_py_types_and_the_connection(kv: KV) -> None:
    key = f"t:kv:list:{secrets.token_hex(4)}"
    await kv.execute("RPUSH", key, "a")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await kv.get(key)
    with pytest.raises(NoScriptError):
        await kv.evalsha("0" * 40, 0)
    # An error is one reply among others: the next command gets its own.
    assert await kv.eval("return {KEYS[1], ARGV[1]}", 1, "k", "v") == [b"k", b"v"]
    assert await kv.delete(key) == 1


async def test_a_killed_connection_fails_its_callers_then_reconnects(
    kv: KV, settings: Settings
) -> None:
    assert await kv.ping()
    own_id = await kv.execute("CLIENT", "ID")
    assert settings.redis.url
    killer = KV.from_url(settings.redis.url)
    try:
        assert await killer.execute("CLIENT", "KILL", "ID", own_id) == 1
    finally:
        await killer.aclose()
    # The first command may still be written to the dying socket; within a few the
    # client notices and opens a new connection.
    for _ in range(5):
        try:
            assert await kv.ping()
            break
        except RedisConnectionError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the client did not reconnect")
    assert await kv.execute("CLIENT", "ID") != own_id


async def test_a_stuck_reply_times_out_and_the_next_command_works(settings: Settings) -> None:
    assert settings.redis.url
    slow = KV.from_url(settings.redis.url, timeout=0.1, breaker_s=0.2)
    busy = (  # holds Redis for 0.3 s
        "local t0 = redis.call('TIME') repeat local t = redis.call('TIME')"
        " until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 300000 return 1"
    )
    try:
        stuck = asyncio.ensure_future(slow.eval(busy, 0))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(slow.ping())  # queued behind it: fails with it
        with pytest.raises(RedisTimeoutError):
            await stuck
        with pytest.raises(RedisTimeoutError):
            await behind
        await asyncio.sleep(0.3)  # let the script finish on the server
        # The timeout opened the breaker: refused at once until its probe finds Redis again.
        with pytest.raises(RedisConnectionError, match="bypassed"):
            await slow.ping()
        await asyncio.sleep(0.1)
        assert await slow.ping()
    finally:
        await slow.aclose()


async def test_a_busy_connection_that_answers_in_time_never_times_out(
    settings: Settings,
) -> None:
    # One watchdog timer follows the oldest command; on a connection that is never idle
    # for a whole timeout it must keep re-arming, not fire on commands answered in time.
    assert settings.redis.url
    kv = KV.from_url(settings.redis.url, timeout=0.1)
    loop = asyncio.get_running_loop()
    stop = loop.time() + 0.5
    answered = 0

    async def client() -> None:
        nonlocal answered
        while loop.time() < stop:
            assert await kv.ping()
            answered += 1

    try:
        await asyncio.gather(*(client() for _ in range(8)))
    finally:
        await kv.aclose()
    assert answered > 100


async def test_an_unreachable_server_is_a_connection_error() -> None:
    dead = KV.from_url("redis://127.0.0.1:1/0", connect_timeout=0.2)
    with pytest.raises(RedisConnectionError):
        await dead.get("x")


async def test_a_refused_select_is_an_error_not_a_silent_db_0(settings: Settings) -> None:
    assert settings.redis.url
    parts = urlsplit(settings.redis.url)
    if parts.scheme == "unix":
        parts = parts._replace(query="db=99999")
    else:
        parts = parts._replace(path="/99999", query="")
    bad = KV.from_url(urlunsplit(parts))
    with pytest.raises(ResponseError, match="DB index"):
        await bad.ping()
    await bad.aclose()


def test_urls() -> None:
    unix = KV.from_url("unix:///tmp/r.sock?db=3")
    assert unix._where == ("127.0.0.1", 6379, "/tmp/r.sock", False)
    assert unix._hello == [("SELECT", 3)]
    tcp = KV.from_url("rediss://user:p%40ss@cache.example:6380/2")
    assert tcp._where == ("cache.example", 6380, None, True)
    assert tcp._hello == [("AUTH", "user", "p@ss"), ("SELECT", 2)]
    assert KV.from_url("redis://:secret@h")._hello == [("AUTH", "secret")]
    with pytest.raises(ValueError, match="scheme"):
        KV.from_url("http://h")
