"""A real HTTP webhook receiver for tests: a tiny ASGI app served by uvicorn in a thread.

It records every request (headers and raw body) and can be told to answer an error status
or to stall past the client's timeout for the next N requests.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class _Plan:
    fail: int = 0
    fail_status: int = 500
    stall: int = 0
    stall_s: float = 0.0


@dataclass
class Receiver:
    requests: list[Received] = field(default_factory=list)
    _plan: _Plan = field(default_factory=_Plan)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._plan = _Plan()

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._plan.fail, self._plan.fail_status = n, status

    def stall_next(self, n: int, seconds: float) -> None:
        with self._lock:
            self._plan.stall, self._plan.stall_s = n, seconds

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def event_ids(self, answered: int | None = 200) -> list[str]:
        return [
            r.headers["paygate-event-id"]
            for r in self.received()
            if answered is None or r.answered == answered
        ]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self._lock:
            status, stall = 200, 0.0
            if self._plan.stall > 0:
                self._plan.stall -= 1
                stall = self._plan.stall_s
            elif self._plan.fail > 0:
                self._plan.fail -= 1
                status = self._plan.fail_status
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.requests.append(Received(headers, body, status))
        if stall:
            await asyncio.sleep(stall)
        reply = b"ok" if status == 200 else b"boom"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": reply})


class ReceiverServer:
    """uvicorn on a free 127.0.0.1 port, in a daemon thread with its own event loop."""

    def __init__(self) -> None:
        self.app = Receiver()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.app.url = f"http://127.0.0.1:{port}/hooks/paygate"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            loop="asyncio",
            http="h11",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("webhook receiver did not start")
            time.sleep(0.01)
        return self.app

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
