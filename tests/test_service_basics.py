"""Health probes, problem+json errors, request ids in responses and logs."""

from __future__ import annotations

import json

import msgspec
import pytest
from litestar import Litestar, post
from litestar.params import JSONBody
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources


async def test_live_and_ready(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": "up", "redis": "up"}}


async def test_openapi_schema_served(client: AsyncTestClient[Litestar]) -> None:
    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/health/ready" in schema.json()["paths"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/thing", 404, "not_found"),
        ("DELETE", "/health/live", 405, "method_not_allowed"),
    ],
)
async def test_router_errors_are_problems(
    client: AsyncTestClient[Litestar], method: str, path: str, status: int, code: str
) -> None:
    resp = await client.request(method, path, headers={"X-Request-ID": "req-42"})
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == "req-42"
    assert resp.headers["x-request-id"] == "req-42"


class _Echo(msgspec.Struct):
    amount: int
    name: str


@post("/echo")
async def _echo(data: JSONBody[_Echo]) -> dict[str, int]:
    return {"amount": data.amount}


@post("/boom")
async def _boom() -> None:
    raise RuntimeError("secret internal detail")


@pytest.fixture
async def echo_client(settings: Settings, res: Resources) -> AsyncTestClient[Litestar]:
    async with AsyncTestClient(app=create_app(settings, extra_routes=[_echo, _boom])) as c:
        yield c  # type: ignore[misc]


async def test_malformed_body_is_400_problem(echo_client: AsyncTestClient[Litestar]) -> None:
    resp = await echo_client.post(
        "/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["code"] == "malformed_body"


async def test_wrong_types_are_422_problem(echo_client: AsyncTestClient[Litestar]) -> None:
    resp = await echo_client.post("/echo", json={"amount": 12.5, "name": "x"})
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "validation_failed"
    assert resp.headers["content-type"].startswith("application/problem+json")


async def test_unhandled_error_hides_internals(echo_client: AsyncTestClient[Litestar]) -> None:
    resp = await echo_client.post("/boom")
    assert resp.status_code == 500
    body = resp.json()
    assert body["code"] == "internal_error"
    assert "secret" not in resp.text
    assert "Traceback" not in resp.text


async def test_log_line_carries_request_id(
    settings: Settings, res: Resources, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncTestClient(app=create_app(settings)) as c:
        resp = await c.get("/definitely/missing")
        generated = resp.headers["x-request-id"]
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("event") == "request" and x.get("status") == 404]
    assert access, lines
    assert access[-1]["request_id"] == generated
    assert len(generated) == 32
