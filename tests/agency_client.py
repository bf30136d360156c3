"""Signed requests for tests: an agency with an API key, and a client that signs for it.

agency = await make_agency_with_key(res)                      # items from the demo catalogue
api = AgencyClient(client, agency.key_id, agency.secret)
resp = await api.post("/v1/bills", json=bill_body(agency))
"""

from __future__ import annotations

import json as jsonlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing import agencies, catalogue
from billing.bills import resident_id_check_char
from gateway.auth import authorization_header
from gateway.state import Resources
from kernel.clock import SHANGHAI

_counter = iter(range(10**9))


@dataclass(frozen=True)
class SignedAgency:
    agency_id: uuid.UUID
    key_id: str
    secret: str
    region_code: str
    credit_code: str


def new_credit_code() -> str:
    body = f"11{330100:06d}MB{next(_counter):07d}"
    return agencies.make_credit_code(body)


async def make_agency_with_key(
    res: Resources,
    *,
    region_code: str = "330100",
    items: tuple[str, ...] = ("FINE-ROAD-TRAFFIC", "EXAM-ACCT-JUNIOR", "TUITION-UNIV-YEAR"),
    name: str = "测试执收单位",
) -> SignedAgency:
    """Seed the demo catalogue, create an agency allowed `items`, and one live key."""
    async with res.sessions() as session:
        await catalogue.seed_demo_items(session)
        credit = new_credit_code()
        agency = await agencies.create_agency(
            session,
            credit_code=credit,
            name=name,
            region_code=region_code,
            item_codes=list(items),
            actor="test",
        )
        key = await agencies.create_key(session, agency.id, actor="test")
        await session.commit()
    return SignedAgency(agency.id, key.key_id, key.secret, region_code, credit)


def resident_id(first17: str = "33010219900101123") -> str:
    return first17 + resident_id_check_char(first17)


def bill_body(
    bill_no: str | None = None,
    *,
    item: str = "FINE-ROAD-TRAFFIC",
    quantity: int = 1,
    unit_amount: Any = 20_000,
    due_in_days: int = 15,
    expires_in_days: int = 60,
    payer_id: str | None = None,
    payer_name: str = "张三",
    remark: str | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    today = now.astimezone(SHANGHAI).date()
    return {
        "agency_bill_no": bill_no or f"B-{uuid.uuid4().hex[:16]}",
        "payer": {
            "type": "PERSON",
            "name": payer_name,
            "id_number": payer_id or resident_id(),
            "phone": "13800001111",
        },
        "lines": [{"item_code": item, "quantity": quantity, "unit_amount": unit_amount}],
        "due_date": (today + timedelta(days=due_in_days)).isoformat(),
        "expires_at": (now + timedelta(days=expires_in_days)).isoformat(),
        "remark": remark,
    }


class AgencyClient:
    """Wraps AsyncTestClient; every request is signed with the agency's key."""

    def __init__(self, client: AsyncTestClient[Litestar], key_id: str, secret: str) -> None:
        self.client = client
        self.key_id = key_id
        self.secret = secret

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        ts: int | None = None,
        nonce: str | None = None,
        secret: str | None = None,
    ) -> httpx.Response:
        body = content if content is not None else b""
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False).encode()
        query = urlencode(params or {})
        auth = authorization_header(
            self.key_id,
            secret or self.secret,
            method=method,
            path=path,
            query=query,
            body=body,
            ts=ts,
            nonce=nonce,
        )
        all_headers = {"authorization": auth, **(headers or {})}
        if json is not None:
            all_headers.setdefault("content-type", "application/json")
        url = f"{path}?{query}" if query else path
        return await self.client.request(method, url, content=body, headers=all_headers)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)
