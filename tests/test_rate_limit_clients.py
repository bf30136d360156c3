"""Who a rate-limited client is: forwarding headers count only from configured proxies (the
right-most address that is not ours), checked on `paygate serve` itself; and the limits keep
holding, in process memory, while Redis is unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from bench.runner import wait_http
from gateway.app import create_app
from gateway.limits import client_key, parse_networks
from gateway.procs import free_port
from gateway.settings import Settings
from gateway.state import Resources
from tests.payments_support import valid_code

PROXIES = parse_networks("10.0.0.0/8, 192.0.2.7")


def test_forwarded_for_is_read_only_from_a_trusted_peer() -> None:
    # No proxy configured, or a peer that is not one: the header is the client's own words.
    assert client_key("198.51.100.4", ["203.0.113.9"], ()) == "198.51.100.4"
    assert client_key("198.51.100.4", ["203.0.113.9"], PROXIES) == "198.51.100.4"
    # Through our balancer: the address it saw, whatever the client wrote before it.
    assert client_key("10.1.2.3", ["203.0.113.9"], PROXIES) == "203.0.113.9"
    assert client_key("10.1.2.3", ["1.2.3.4, 203.0.113.9"], PROXIES) == "203.0.113.9"
    assert client_key("10.1.2.3", ["5.6.7.8", "203.0.113.9"], PROXIES) == "203.0.113.9"
    # Two of our proxies in a row: skip both; the right-most untrusted address is the client.
    assert client_key("10.1.2.3", ["1.2.3.4, 203.0.113.9, 192.0.2.7"], PROXIES) == "203.0.113.9"
    # Garbage to the right of our proxies' entries: stop at the last address we trust.
    assert client_key("10.1.2.3", ["203.0.113.9, junk"], PROXIES) == "10.1.2.3"
    # Only proxies in the chain, or no header at all: the left-most / the peer.
    assert client_key("10.1.2.3", ["10.9.9.9"], PROXIES) == "10.9.9.9"
    assert client_key("10.1.2.3", [], PROXIES) == "10.1.2.3"
    # IPv6 counts per /64; a v4-mapped address as the v4 address.
    assert client_key("2001:db8:1:2:aaaa::1", [], ()) == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:bbbb::9", [], ()) == "2001:db8:1:2::/64"
    assert client_key("::ffff:198.51.100.4", [], ()) == "198.51.100.4"


def test_a_bad_proxy_setting_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="PAYGATE_TRUSTED_PROXIES"):
        parse_networks("10.0.0.0/8, not-an-address")


@contextmanager
def _serve(tmp_path: Path, **env: str) -> Iterator[str]:
    """`paygate serve` as production runs it (uvicorn, httptools), on this test's servers."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env=os.environ | {"PAYGATE_LOOKUP_RATE_LIMIT": "3", "PAYGATE_LOG_LEVEL": "WARNING"} | env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _statuses(base: str, forwarded: list[str]) -> list[int]:
    with httpx.Client(base_url=base, timeout=10) as c:
        return [
            c.get(f"/v1/pay/{valid_code()}", headers={"X-Forwarded-For": f}).status_code
            for f in forwarded
        ]


@pytest.mark.slow
def test_serve_ignores_forwarded_for_unless_the_peer_is_a_trusted_proxy(
    tmp_path: Path, res: Resources
) -> None:
    rotating = [f"203.0.113.{n}" for n in range(1, 7)]
    with _serve(tmp_path) as base:
        # A client rotating the header is still one client.
        assert _statuses(base, rotating) == [404, 404, 404, 429, 429, 429]
    with _serve(tmp_path, PAYGATE_TRUSTED_PROXIES="127.0.0.1/32") as base:
        # Behind our balancer (127.0.0.1 here) every citizen has a bucket of their own...
        assert _statuses(base, rotating) == [404] * 6
        # ...and what a client writes left of the balancer's entry changes nothing.
        spoofed = [f"198.51.100.{n}, 203.0.113.200" for n in range(1, 6)]
        assert _statuses(base, spoofed) == [404, 404, 404, 429, 429]


async def test_limits_hold_in_process_memory_while_redis_is_down(
    res: Resources, settings: Settings
) -> None:
    dead = replace(settings.redis, url=f"redis://127.0.0.1:{free_port()}/0")
    tight = replace(settings, redis=dead, payments=replace(settings.payments, lookup_rate_limit=3))
    async with AsyncTestClient(app=create_app(tight)) as c:
        code = valid_code()
        statuses = [(await c.get(f"/v1/pay/{code}")).status_code for _ in range(5)]
    assert statuses == [404, 404, 404, 429, 429]
