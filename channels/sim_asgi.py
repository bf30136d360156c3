"""The ASGI plumbing the simulators' bare apps share (the bank, the kiosks and their
acquirer, the card terminals' acquirer and page): the lifespan handshake, the request read
whole, the answer sent. Bare ASGI keeps a simulator free of the service's web framework."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["Receive", "Scope", "Send", "lifespan", "read_body", "read_request", "respond"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def lifespan(
    receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Answer the server's start-up and shut-down messages (`on_shutdown` runs before the
    shut-down is acknowledged)."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes:
    """The request's whole body."""
    body = b""
    while True:
        msg = await receive()
        body += bytes(msg.get("body", b""))
        if not msg.get("more_body"):
            return body


async def read_request(scope: Scope, receive: Receive) -> tuple[dict[str, str], bytes]:
    """The request's headers (names in lower case) and its whole body."""
    body = await read_body(receive)
    return {k.decode().lower(): v.decode() for k, v in scope["headers"]}, body


async def respond(
    send: Send,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    default_type: str | None = "application/json",
) -> None:
    """Send the answer: its length, its headers (names in lower case, as ASGI wants), and
    `default_type` as its content type when the headers name none."""
    hdrs = [(b"content-length", str(len(body)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if default_type is not None and not any(k == b"content-type" for k, _ in hdrs):
        hdrs.append((b"content-type", default_type.encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})
