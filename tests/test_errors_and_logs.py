"""One answer for malformed bodies; log lines that stay JSON; 500s traced in the log only."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from litestar import Litestar, post
from litestar.testing import AsyncTestClient

from billing.notice import render_bill_notice
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from kernel.pdf import DocItem
from kernel.staff import create_staff
from tests.agency_client import AgencyClient, make_agency_with_key
from tests.payments_support import valid_code

MALFORMED = b'{"agency_bill_no": "X-1", '


async def test_malformed_json_is_400_malformed_body_everywhere(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)
    api = AgencyClient(client, agency.key_id, agency.secret)
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    json_type = {"content-type": "application/json"}
    answers = [
        await api.post("/v1/bills", content=MALFORMED, headers=json_type),
        await api.post("/v1/bills:batch", content=MALFORMED, headers=json_type),
        await api.post("/v1/bills/search", content=MALFORMED, headers=json_type),
        await api.request("PUT", "/v1/webhooks/endpoint", content=MALFORMED, headers=json_type),
        await client.post(
            "/v1/settlement/refunds",
            content=MALFORMED,
            headers={**json_type, "Authorization": f"Bearer {token}"},
        ),
        await client.post(f"/v1/pay/{valid_code()}/attempts", content=MALFORMED, headers=json_type),
    ]
    got = [(r.status_code, r.json()["code"], r.headers["content-type"]) for r in answers]
    assert got == [(400, "malformed_body", "application/problem+json")] * len(answers)


def _json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_pdf_rendering_writes_nothing_to_the_log(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    create_app(settings)  # configures logging as the service does
    capsys.readouterr()
    pdf = render_bill_notice(
        agency_name="交通警察支队",
        payer_name="张三",
        items=[DocItem("FINE", "交通违法罚款", "次", 1, 20_000, 20_000)],
        amount_fen=20_000,
        due_date=date(2026, 12, 20),
        payment_code=valid_code(),
        pay_url="http://127.0.0.1:8000/pay/x",
        ways=("支付宝",),
        bill_no="JJ-1",
        issued_on=date(2026, 12, 5),
        remark="",
    )
    assert pdf.startswith(b"%PDF")
    lines = _json_lines(capsys.readouterr().err)  # each line must be one JSON document
    assert [x for x in lines if str(x.get("logger", "")).startswith(("fontTools", "fpdf"))] == []
    assert lines == []


@post("/boom")
async def _boom() -> None:
    raise RuntimeError("the internal detail")


async def test_a_500_keeps_its_traceback_in_the_log_not_in_the_answer(
    settings: Settings, res: Resources, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncTestClient(app=create_app(settings, extra_routes=[_boom])) as c:
        resp = await c.post("/boom")
    assert resp.status_code == 500
    assert resp.json()["code"] == "internal_error"
    assert "Traceback" not in resp.text
    assert "internal detail" not in resp.text
    lines = _json_lines(capsys.readouterr().err)
    [logged] = [x for x in lines if x["event"] == "unhandled error"]
    assert logged["exc_type"] == "RuntimeError"
    assert logged["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" in logged["exception"]
    assert "RuntimeError: the internal detail" in logged["exception"]
    assert "_boom" in logged["exception"]  # the frame that raised
