"""Rate limits of the public, unauthenticated lookups: who the client is, and how many tries
it has left.

Who: the socket's peer address, unless that peer is one of our own proxies
(`PAYGATE_TRUSTED_PROXIES`, CIDRs). Then `X-Forwarded-For` is read from the right: every
trusted proxy appended the address it saw, so the right-most address that is not one of
ours is the client. Whatever a client writes to the left of that is ignored, so a rotating
header buys it nothing; and behind a balancer each citizen still gets their own bucket
instead of all sharing the balancer's. IPv6 clients count per /64 (one subscriber's
allocation), or a single host could rotate through 2⁶⁴ addresses.

How many: fixed windows counted in Redis (one script call, which can also fetch a cache key
in the same round trip). While Redis is unavailable each process counts in memory instead,
so the limits hold per process (with N processes a client gets at most N times the limit)
rather than switching off.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import time
from collections.abc import Iterable
from typing import Any

import structlog
from litestar import Request
from redis.exceptions import NoScriptError, RedisError

from kernel.errors import RateLimited
from kernel.kv import KV

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(raw: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.0.2.7, fd00::/8` → networks (a bare address is a /32 or /128)."""
    networks = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"PAYGATE_TRUSTED_PROXIES: {part!r} is not an address or CIDR"
            ) from exc
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: Address, trusted: Iterable[Network]) -> bool:
    return any(addr in net for net in trusted)


def _bucket_of(addr: Address) -> str:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


def client_key(peer: str | None, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The rate-limit identity of a request: see the module doc."""
    if not trusted and peer and ":" not in peer:
        return peer  # the usual case, an IPv4 peer and no proxies: nothing to parse
    peer_addr = _address(peer or "")
    if peer_addr is None:
        return peer or "unknown"
    client = peer_addr
    if trusted and _trusted(peer_addr, trusted):
        hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            addr = _address(hop)
            if addr is None:
                break  # not written by a proxy of ours: stop at the last address we trust
            client = addr
            if not _trusted(addr, trusted):
                break
    return _bucket_of(client)


@functools.cache
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(",".join(cidrs))


def request_client(request: Request[Any, Any, Any], trusted_proxies: tuple[str, ...]) -> str:
    """`client_key` of a request, given the trusted proxies' CIDRs (settings)."""
    peer = request.client.host if request.client else None
    forwarded = request.headers.getall("x-forwarded-for", []) if trusted_proxies else []
    return client_key(peer, forwarded, _networks(trusted_proxies))


# INCRBY the window's counter (EXPIRE on its first hit; by 0 = just read it) and GET a cache
# key, in ONE call: the warm-cache lookup is then a single Redis round trip. A script rather
# than a pipeline because redis-py's pipeline machinery costs more CPU than the round trip.
_COUNT_AND_GET = """
local n
if tonumber(ARGV[2]) > 0 then
  n = redis.call('INCRBY', KEYS[1], ARGV[2])
  if n == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
else
  n = tonumber(redis.call('GET', KEYS[1]) or '0')
end
if KEYS[2] then return {n, redis.call('GET', KEYS[2])} end
return {n}
"""
_COUNT_AND_GET_SHA = hashlib.sha1(_COUNT_AND_GET.encode()).hexdigest()  # noqa: S324 - Redis's script id


class _LocalWindows:
    """The in-process fallback: counters of the current windows only, bounded in size."""

    MAX_KEYS = 100_000
    OVERFLOW = "overflow"

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}

    def count(self, key: str, by: int, ttl_s: int, now: float) -> int:
        if self._expires.get(key, now + 1) <= now:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
        if key not in self._counts and len(self._counts) >= self.MAX_KEYS:
            self._sweep(now)
            if len(self._counts) >= self.MAX_KEYS:
                # A flood of distinct clients shares one counter rather than growing the map.
                key = f"{key.partition(':')[0]}:{self.OVERFLOW}"
        if by:
            if key not in self._counts:
                self._counts[key] = 0
                self._expires[key] = now + ttl_s
            self._counts[key] += by
        return self._counts.get(key, 0)

    def _sweep(self, now: float) -> None:
        for key in [k for k, t in self._expires.items() if t <= now]:
            del self._counts[key]
            del self._expires[key]


class Limiter:
    """Fixed-window counters in Redis, in process memory while Redis is unavailable."""

    def __init__(self, redis: KV) -> None:
        self._redis = redis
        self._local = _LocalWindows()

    async def _count(
        self, key: str, by: int, ttl_s: int, also_get: str | None
    ) -> tuple[int, bytes | None]:
        keys = [key] if also_get is None else [key, also_get]
        try:
            try:
                answers = await self._redis.evalsha(_COUNT_AND_GET_SHA, len(keys), *keys, ttl_s, by)
            except NoScriptError:  # first call after a Redis restart: load it
                answers = await self._redis.eval(_COUNT_AND_GET, len(keys), *keys, ttl_s, by)
        except RedisError:
            log.warning("rate limiter counting in process memory: Redis unavailable")
            return self._local.count(key, by, ttl_s, time.monotonic()), None
        cached: bytes | None = answers[1] if len(answers) > 1 else None
        return int(answers[0]), cached

    async def hit(
        self,
        bucket: str,
        who: str,
        limit: int,
        window_s: int,
        *,
        also_get: str | None = None,
    ) -> bytes | None:
        """Count one request of `who` in `bucket`; RateLimited past `limit` per window.

        `also_get` fetches a cache key in the same round trip (None when Redis is down).
        """
        now = int(time.time())
        key = f"rl:{bucket}:{who}:{now // window_s}"
        n, cached = await self._count(key, 1, window_s, also_get)
        if n > limit:
            raise RateLimited(
                "Too many requests; slow down.",
                code="rate_limited",
                retry_after=window_s - now % window_s,
            )
        return cached

    async def check_budget(self, bucket: str, subject: str, budget: int, window_s: int) -> None:
        """RateLimited when `subject` has used up its failure budget for the window."""
        now = int(time.time())
        n, _ = await self._count(f"rl:{bucket}:{subject}:{now // window_s}", 0, window_s, None)
        if n >= budget:
            raise RateLimited(
                "Too many failed tries; try again later.",
                code="too_many_failures",
                retry_after=window_s - now % window_s,
            )

    async def spend(self, bucket: str, subject: str, window_s: int) -> None:
        """Record one failure against `subject`'s budget."""
        now = int(time.time())
        await self._count(f"rl:{bucket}:{subject}:{now // window_s}", 1, window_s, None)
