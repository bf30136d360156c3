"""Fixtures for the Alipay channel: the simulator and a notification receiver, both served
by uvicorn (httptools) on 127.0.0.1 in threads, keys generated into a temp dir.

Loaded for every test module through `pytest_plugins` in tests/conftest.py. Use:
- `alipay_keys` (session): KeySet of freshly generated PEM files.
- `alipay_sim` (session): SimServer — `.url`, `.gateway_url`, `.app` (the AlipaySimulator),
  `.control(method, path, data)` for the `/sim/...` control API.
- `notify_receiver` (function, emptied per test): Receiver — `.url` to use as notify_url,
  `.bodies` received, `.wait_for(n)`, `.answers` (queue of (status, body) to reply next;
  default 200 "success").
- `alipay_settings` / `alipay` (function): AlipayConfig aimed at the simulator, and an
  AlipayAdapter built from them (closed after the test).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from channels.alipay.adapter import AlipayAdapter
from channels.alipay.config import AlipayConfig
from channels.alipay.keys import KeySet, ensure_keys
from channels.alipay.simulator import AlipaySimulator, create_simulator
from tests.servers import ServerThread

APP_ID = "2021000000000001"
# Alipay's 4m…15h retry schedule scaled to ≈ 0.05 s … 11 s.
TIME_SCALE = 0.0002


def http_json(method: str, url: str, data: Any = None) -> tuple[int, Any]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class SimServer:
    url: str
    app: AlipaySimulator

    @property
    def gateway_url(self) -> str:
        return f"{self.url}/gateway.do"

    def control(self, method: str, path: str, data: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.url}{path}", data)


@dataclass
class Receiver:
    """A real HTTP endpoint that records notification bodies and answers as told."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    answers: list[tuple[int, bytes]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = dict(scope["headers"])
        self.bodies.append(body)
        self.content_types.append(headers.get(b"content-type", b"").decode())
        status, answer = self.answers.pop(0) if self.answers else (200, b"success")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def wait_for(self, count: int, within: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + within
        while len(self.bodies) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} notifications, got {len(self.bodies)}")
            await asyncio.sleep(0.02)
        return self.bodies


@pytest.fixture(scope="session")
def alipay_keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return ensure_keys(tmp_path_factory.mktemp("alipay-keys"))


@pytest.fixture(scope="session")
def alipay_sim(alipay_keys: KeySet) -> Iterator[SimServer]:
    app = create_simulator(
        app_id=APP_ID,
        app_public_key_pem=alipay_keys.app_public.read_text(),
        alipay_private_key_pem=alipay_keys.alipay_private.read_text(),
        time_scale=TIME_SCALE,
    )
    with ServerThread(app) as srv:
        yield SimServer(url=f"http://127.0.0.1:{srv.port}", app=app)


@pytest.fixture(scope="session")
def _receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()
    with ServerThread(receiver) as srv:
        receiver.url = f"http://127.0.0.1:{srv.port}/channels/alipay/notify"
        yield receiver


@pytest.fixture
def notify_receiver(_receiver_server: Receiver) -> Receiver:
    _receiver_server.bodies.clear()
    _receiver_server.content_types.clear()
    _receiver_server.answers.clear()
    return _receiver_server


def settings_for(keys: KeySet, gateway_url: str, **overrides: Any) -> AlipayConfig:
    values: dict[str, Any] = {
        "app_id": APP_ID,
        "gateway_url": gateway_url,
        "app_private_key_path": Path(keys.app_private),
        "alipay_public_key_path": Path(keys.alipay_public),
        "pool_size": 4,
        "timeout_s": 2.0,
    }
    values.update(overrides)
    return AlipayConfig(**values)


@pytest.fixture
def alipay_settings(alipay_keys: KeySet, alipay_sim: SimServer) -> AlipayConfig:
    return settings_for(alipay_keys, alipay_sim.gateway_url)


@pytest.fixture
async def alipay(alipay_settings: AlipayConfig) -> AsyncIterator[AlipayAdapter]:
    adapter = AlipayAdapter(alipay_settings)
    yield adapter
    await adapter.aclose()
