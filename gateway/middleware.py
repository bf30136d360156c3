"""Pure-ASGI request-id and access-log middleware (cheaper than Litestar's class stack), and
the edge check every request passes before its handler (`reject_nul`)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import InvalidInput

log = structlog.get_logger("paygate.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_QUIET_PREFIXES = ("/health/",)
# A JSON \u0000 escape not itself escaped (an odd run of backslashes before the "u").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Channels' own routes answer bad input in their protocol (signed), not as problem+json.
_OWN_PROTOCOL_PREFIX = "/v1/channels/"


async def reject_nul(request: Request[Any, Any, Any]) -> None:
    """A NUL character anywhere in the input is a 422 `nul_character`: no field of ours may
    hold one, and PostgreSQL text cannot (it failed there, as a 500). Checked once here
    rather than on each of the hundred string fields; a few µs, mostly a byte search."""
    scope = request.scope
    path: str = scope["path"]
    if b"%00" in scope["query_string"] or "\x00" in path:
        raise _nul()
    if scope["method"] in _BODY_METHODS and not path.startswith(_OWN_PROTOCOL_PREFIX):
        body = await request.body()  # cached on the request: the handler reads it again
        if b"\\u0000" in body and _JSON_NUL.search(body):
            raise _nul()
        if b"%00" in body and "form-urlencoded" in request.headers.get("content-type", ""):
            raise _nul()


def _nul() -> InvalidInput:
    return InvalidInput("Input must not contain NUL characters.", code="nul_character")


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    # Ids (32 hex digits, like the uuid4().hex they replace) are a random per-process
    # prefix and a counter: unique, and about 3 µs cheaper than uuid4 per request. They
    # correlate log lines; they are not secrets.
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)
    # Decided once per app (gateway.logging.configure runs before create_app builds this):
    # with the access log off, a request pays for no log call at all.
    access_log = logging.getLogger().isEnabledFor(logging.INFO)
    quiet_ok = logging.getLogger().isEnabledFor(logging.DEBUG)

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = incoming.decode("latin-1")
        request_id = text if _VALID_ID.match(text) else f"{prefix}{next(counter):016x}"
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
            quiet = path.startswith(_QUIET_PREFIXES) and status < 400
            if quiet_ok if quiet else access_log:
                (log.debug if quiet else log.info)(
                    "request",
                    method=scope.get("method", ""),
                    path=path,
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )

    return middleware
