"""A minimal webhook receiver for the webhooks benchmark: reads the body, answers 200."""

from __future__ import annotations

from typing import Any


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def create_app() -> Any:
    return _app
