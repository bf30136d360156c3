"""Pure-ASGI request-id and access-log middleware (cheaper than Litestar's class stack)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("paygate.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_QUIET_PREFIXES = ("/health/",)


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = incoming.decode("latin-1")
        request_id = text if _VALID_ID.match(text) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            path = scope["path"]
            level = log.debug if path.startswith(_QUIET_PREFIXES) and status < 400 else log.info
            level(
                "request",
                method=scope.get("method", ""),
                path=path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )

    return middleware
