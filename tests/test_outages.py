"""Outages through real sockets: PostgreSQL cut off by a TCP proxy or refusing connections.

While the database is out of reach the service answers 503 with Retry-After (not a 500),
and the worker pauses its jobs with one log line instead of a traceback per job per second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from billing.models import Bill
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key
from tests.payments_support import bill_for_test, valid_code
from tests.servers import ServerThread
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent


def _proxied(url: str) -> tuple[str, tuple[str, int] | str]:
    """`url` rewritten to go through a local TCP port, and what the proxy should reach."""
    parsed = make_url(url)
    socket_dir = parsed.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):  # embedded: a unix socket
        target: tuple[str, int] | str = f"{socket_dir}/.s.PGSQL.{parsed.port or 5432}"
        parsed = parsed.difference_update_query(["host"])
    else:
        target = (parsed.host or "127.0.0.1", parsed.port or 5432)
    return parsed.set(host="127.0.0.1", port=0).render_as_string(hide_password=False), target


@contextmanager
def _through_proxy(settings: Settings) -> Iterator[tuple[TcpProxy, Settings]]:
    assert settings.database.url is not None
    url, target = _proxied(settings.database.url)
    with TcpProxy(target) as proxy:
        url = url.replace("127.0.0.1:0", f"127.0.0.1:{proxy.port}")
        yield proxy, replace(settings, database=replace(settings.database, url=url))


@pytest.fixture
def db_proxy(settings: Settings) -> Iterator[tuple[TcpProxy, Settings]]:
    with _through_proxy(settings) as proxied:
        yield proxied


@pytest.fixture
def bank_db_proxy(bank_settings: Settings) -> Iterator[tuple[TcpProxy, Settings]]:
    with _through_proxy(bank_settings) as proxied:
        yield proxied


def _assert_unavailable(resp: object) -> None:
    status = getattr(resp, "status_code", None)
    assert status == 503, getattr(resp, "text", "")
    headers = getattr(resp, "headers", {})
    assert headers["retry-after"].isdigit()
    assert headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "database_unavailable"  # type: ignore[attr-defined]


async def test_database_cut_off_answers_503_with_retry_after_then_recovers(
    res: Resources, db_proxy: tuple[TcpProxy, Settings]
) -> None:
    proxy, settings = db_proxy
    agency = await make_agency_with_key(res)
    async with AsyncTestClient(app=create_app(settings)) as client:
        api = AgencyClient(client, agency.key_id, agency.secret)
        assert (await client.get(f"/v1/pay/{valid_code()}")).status_code == 404
        proxy.cut()
        # The pooled connection is dropped under the first request; the next ones are refused.
        for _ in range(3):
            _assert_unavailable(await client.get(f"/v1/pay/{valid_code()}"))
        _assert_unavailable(await api.post("/v1/bills", json=bill_body("DOWN-1")))
        proxy.restore()
        assert (await client.get(f"/v1/pay/{valid_code()}")).status_code == 404
        created = await api.post("/v1/bills", json=bill_body("UP-1"))
        assert created.status_code == 201, created.text
    async with res.sessions() as s:  # the refused bill wrote nothing
        assert await s.scalar(select(func.count()).select_from(Bill)) == 1


class _Worker:
    """`run_forever` in a subprocess on `settings`; its JSON log lines collected as they come."""

    def __init__(self, settings: Settings) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": settings.database.url or "",
            "PAYGATE_LOG_FORMAT": "json",
            "PAYGATE_LOG_LEVEL": "INFO",
        }
        code = (
            "from gateway import logging as L, worker\n"
            "from gateway.cli.base import with_resources\n"
            "from gateway.settings import Settings\n"
            "s = Settings.from_env(); L.configure(s.log); with_resources(s, worker.run_forever)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self.lines.append(json.loads(line))  # every line is one JSON document

    def events(self) -> list[object]:
        return [x["event"] for x in self.lines]

    def wait_for(self, event: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events():
            assert self.proc.poll() is None, self.lines[-5:]
            assert time.monotonic() < deadline, self.events()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)


@pytest.mark.usefixtures("res")
def test_worker_pauses_with_one_line_while_the_database_is_out_of_reach(
    db_proxy: tuple[TcpProxy, Settings],
) -> None:
    proxy, settings = db_proxy
    proxy.cut()
    worker = _Worker(settings)
    try:
        worker.wait_for("database unavailable; jobs paused")
        time.sleep(5)  # several job intervals (1-2 s) and probes while it refuses
        proxy.restore()
        worker.wait_for("database reachable again; jobs resumed")
    finally:
        worker.stop()
    lines = worker.lines
    assert not [x for x in lines if "exception" in x], lines[-5:]
    events = worker.events()
    assert events.count("database unavailable; jobs paused") == 1, events
    assert events.count("database reachable again; jobs resumed") == 1, events
    assert not [x for x in lines if x["level"] == "error"], events
    assert events[-1] == "worker stopped"


async def _bank_pays(simulator: ServerThread, gateway: ServerThread, code: str, **kw: Any) -> Any:
    async with httpx.AsyncClient(timeout=60) as c:
        r = await c.post(
            f"{simulator.url}/control/102/pay",
            json={"payment_code": code, "gateway_url": gateway.url, **kw},
        )
        r.raise_for_status()
        return r.json()


async def test_a_bank_gets_its_own_signed_try_later_while_the_database_is_out_of_reach(
    res: Resources, simulator: ServerThread, bank_db_proxy: tuple[TcpProxy, Settings]
) -> None:
    proxy, settings = bank_db_proxy
    async with res.sessions() as s:
        first = (await bill_for_test(s, amount=1_000))[2]
        second = (await bill_for_test(s, amount=2_000))[2]
    with ServerThread(create_app(settings)) as gateway:
        paid = await _bank_pays(simulator, gateway, first.payment_code)
        assert [c["code"] for c in paid["confirms"]] == ["00000"]

        proxy.cut()
        query = (await _bank_pays(simulator, gateway, second.payment_code))["query"]
        assert (query["code"], query["signature_ok"]) == ("19003", True)
        confirm = await _bank_pays(
            simulator, gateway, second.payment_code, skip_query=True, amount=2_000
        )
        [answer] = confirm["confirms"]
        assert (answer["code"], answer["signature_ok"]) == ("19003", True)

        proxy.restore()  # the bank sends its confirmation again (signed afresh)
        again = await _bank_pays(
            simulator, gateway, second.payment_code, skip_query=True, amount=2_000
        )
        assert [c["code"] for c in again["confirms"]] == ["00000"]
    async with res.sessions() as s:
        assert (await s.get_one(Bill, second.id)).status == "PAID"
