"""Bad input is a 422 problem+json with a stable code and writes nothing — never a 500.

Found by outside fuzzing: a NUL byte (PostgreSQL text cannot hold one), a batch line
number beyond 32 bits, an `expires_at` at the end of the calendar.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from billing.models import Bill
from channels.bank import transforms as bank_wire
from gateway.state import Resources
from kernel.staff import create_staff
from payments.models import Receipt
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key
from tests.payments_support import BankWorld, bank_secret, bill_for_test

Client = AsyncTestClient[Litestar]


def _problem(resp: httpx.Response, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
async def api(res: Resources, client: Client) -> AgencyClient:
    agency = await make_agency_with_key(res)
    return AgencyClient(client, agency.key_id, agency.secret)


@pytest.fixture
async def finance(res: Resources) -> dict[str, str]:
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    return {"Authorization": f"Bearer {token}"}


async def _bills(res: Resources) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(Bill)) or 0)


@pytest.mark.parametrize(
    "where",
    ["payer.name", "agency_bill_no", "remark", "lines.0.item_code", "payer.phone"],
)
async def test_a_nul_byte_in_a_bill_is_422(res: Resources, api: AgencyClient, where: str) -> None:
    body = bill_body("NUL-1")
    body["remark"] = "ok"
    body["payer"]["phone"] = "13800000000"
    *parents, leaf = where.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[leaf] = f"{target[leaf][:3]}\x00{target[leaf][3:]}"
    _problem(await api.post("/v1/bills", json=body), "nul_character")
    _problem(await api.post("/v1/bills:batch", json={"bills": [body]}), "nul_character")
    assert await _bills(res) == 0


@pytest.mark.parametrize("field", ["agency_bill_no", "status", "payment_code", "cursor"])
async def test_a_nul_byte_in_a_bill_filter_is_422(api: AgencyClient, field: str) -> None:
    _problem(await api.get("/v1/bills", params={field: "A\x00B"}), "nul_character")
    _problem(await api.post("/v1/bills/search", json={field: "A\x00B"}), "nul_character")


async def test_an_expiry_at_the_end_of_the_calendar_is_422(
    res: Resources, api: AgencyClient
) -> None:
    for expires_at in ("9999-12-31T23:59:59+08:00", "9999-12-31T00:00:00-12:00"):
        body = bill_body("FAR-1")
        body["expires_at"] = expires_at
        _problem(await api.post("/v1/bills", json=body))
    body = bill_body("FAR-2")
    body["due_date"] = "9999-12-31"
    _problem(await api.post("/v1/bills", json=body))
    assert await _bills(res) == 0


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/settlement/discrepancies", {"channel": "ali\x00pay"}),
        ("/v1/settlement/discrepancies", {"status": "OPEN\x00"}),
        (
            "/v1/settlement/totals",
            {"group_by": "agency\x00", "from": "2026-11-01", "to": "2026-11-02"},
        ),
        ("/v1/settlement/days/2026-11-01%00", {}),
    ],
)
async def test_a_nul_byte_in_a_finance_filter_is_422(
    client: Client, finance: dict[str, str], path: str, params: dict[str, str]
) -> None:
    _problem(await client.get(path, params=params, headers=finance))


@pytest.mark.parametrize("line_no", [2**31, 2**63, -1, 0])
async def test_a_batch_line_number_out_of_range_is_422(
    client: Client, finance: dict[str, str], line_no: int
) -> None:
    resp = await client.get(
        f"/v1/settlement/batches/{uuid.uuid4()}/lines/{line_no}/codes", headers=finance
    )
    _problem(resp)


async def test_a_nul_byte_in_a_finance_body_is_422(client: Client, finance: dict[str, str]) -> None:
    resp = await client.post(
        "/v1/settlement/refunds",
        json={"receipt_id": str(uuid.uuid4()), "amount": 100, "reason": "dup\x00licate"},
        headers=finance,
    )
    _problem(resp, "nul_character")
    resp = await client.post(
        "/v1/settlement/discrepancies/1/actions",
        json={"decision": "RESOLVED", "action": "x\x00", "note": "n"},
        headers=finance,
    )
    _problem(resp, "nul_character")


async def test_a_nul_byte_elsewhere_is_422_but_an_escaped_backslash_is_not_a_nul(
    res: Resources, client: Client, api: AgencyClient
) -> None:
    code = (await api.post("/v1/bills", json=bill_body("NUL-3"))).json()["payment_code"]
    resp = await client.post(
        f"/v1/pay/{code}/attempts",
        json={"channel": "alipay", "mode": "qr", "return_url": "https://x.example/\x00"},
    )
    _problem(resp, "nul_character")
    # A literal backslash followed by "u0000" is six ordinary characters, not a NUL.
    body = bill_body("NUL-4")
    body["remark"] = "path C:\\u0000\\x"
    created = await api.post("/v1/bills", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["remark"] == "path C:\\u0000\\x"


@pytest.mark.parametrize("field", ["bank_serial", "payment_code", "pay_mode"])
async def test_a_nul_byte_in_a_bank_message_is_its_own_signed_bad_request(
    res: Resources, world: BankWorld, field: str
) -> None:
    async with res.sessions() as s:
        bill = (await bill_for_test(s, amount=1_000))[2]
    doc = {
        "payment_code": bill.payment_code,
        "bank_serial": "102SERIAL0001",
        "amount": "10.00",
        "paid_at": bank_wire.format_time(datetime.now(UTC)),
        "pay_mode": "counter",
    }
    doc[field] = f"{doc[field]}\x00"
    path = "/v1/channels/bank/102/confirm"
    body = json.dumps(doc).encode()
    headers = bank_wire.sign(bank_secret("102"), "POST", path, body, "102")
    async with httpx.AsyncClient(timeout=30) as c:
        resp = await c.post(world.gateway_url + path, content=body, headers=headers)
    assert resp.status_code == 200, resp.text  # the bank's protocol, not problem+json
    # Malformed (19002), or for pay_mode a value outside its set (10002): the bank's codes.
    assert resp.json()["code"] in {
        bank_wire.ResultCode.BAD_REQUEST,
        bank_wire.ResultCode.PARAMETER_ERROR,
    }
    assert "X-Bank-Signature" in resp.headers
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 0
