"""Agency-facing extras: notice PDF, e-notes by bill, webhook endpoint/events/resend,
cache invalidation on cancel — all through the signed agency API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing.models import Bill
from billing.payer import cache_key
from billing.webhook_delivery import ingest
from gateway.state import Resources
from kernel.pdf import ink_ratio, pdf_to_png
from payments.confirm import confirm_payment
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key
from tests.settle_helpers import make_attempt


@pytest.fixture
async def api(res: Resources, client: AsyncTestClient[Litestar]) -> AgencyClient:
    agency = await make_agency_with_key(res)
    return AgencyClient(client, agency.key_id, agency.secret)


async def _issue(api: AgencyClient, no: str) -> dict[str, object]:
    resp = await api.post("/v1/bills", json=bill_body(no))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def test_notice_pdf_renders_with_payment_code(api: AgencyClient) -> None:
    bill = await _issue(api, "N-1")
    resp = await api.get(f"/v1/bills/{bill['id']}/notice.pdf")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/pdf"
    assert resp.content.startswith(b"%PDF")
    assert ink_ratio(pdf_to_png(resp.content)) > 0.005


async def test_other_agency_cannot_fetch_notice_or_enotes(
    res: Resources, api: AgencyClient, client: AsyncTestClient[Litestar]
) -> None:
    bill = await _issue(api, "N-2")
    other = await make_agency_with_key(res)
    stranger = AgencyClient(client, other.key_id, other.secret)
    for path in ("notice.pdf", "enotes"):
        resp = await stranger.get(f"/v1/bills/{bill['id']}/{path}")
        assert resp.status_code == 404
    assert (await api.get(f"/v1/bills/{bill['id']}/enotes")).json() == []


async def test_cancel_drops_the_citizen_cache(res: Resources, api: AgencyClient) -> None:
    bill = await _issue(api, "N-3")
    code = str(bill["payment_code"])
    await res.redis.set(cache_key(code), b"stale")
    resp = await api.post(f"/v1/bills/{bill['id']}/cancel", json={"reason": "issued twice"})
    assert resp.status_code == 200
    assert resp.json()["status"] == "CANCELLED"
    assert await res.redis.get(cache_key(code)) is None


async def test_webhook_endpoint_events_and_resend(res: Resources, api: AgencyClient) -> None:
    resp = await api.request(
        "PUT", "/v1/webhooks/endpoint", json={"url": "http://127.0.0.1:9/hooks"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["secret"]
    bill = await _issue(api, "N-4")
    await api.post(f"/v1/bills/{bill['id']}/cancel", json={})
    # The worker turns the outbox message into an event (no delivery needed for the API).
    await ingest(res.sessions)
    page = (await api.get("/v1/webhooks/events")).json()
    assert [e["type"] for e in page["items"]] == ["bill.cancelled"]
    event_id = page["items"][0]["id"]
    assert (await api.get(f"/v1/webhooks/events/{event_id}")).status_code == 200
    assert (await api.get(f"/v1/webhooks/events/{event_id}/attempts")).json() == []
    resent = await api.post(f"/v1/webhooks/events/{event_id}/resend", json={})
    assert resent.status_code == 202
    assert (await api.get("/v1/webhooks/events", params={"type": "nope"})).status_code == 422


async def test_agency_refund_is_guarded_idempotent_and_isolated(
    res: Resources, api: AgencyClient, client: AsyncTestClient[Litestar]
) -> None:
    bill = await _issue(api, "N-5")
    bill_id = uuid.UUID(str(bill["id"]))
    unpaid = await api.post(f"/v1/bills/{bill_id}/refunds", json={"amount": 1, "reason": "x"})
    assert (unpaid.status_code, unpaid.json()["code"]) == (409, "bill_not_paid")
    async with res.sessions() as s:
        attempt = await make_attempt(
            s, await s.get_one(Bill, bill_id), int(bill["principal_amount"])
        )
        await s.commit()
    confirmed = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="2026TEST0001",
        amount=attempt.amount,
        paid_at=datetime.now(UTC),
        source="test",
    )
    assert confirmed.acknowledged
    too_much = await api.post(
        f"/v1/bills/{bill_id}/refunds", json={"amount": attempt.amount + 1, "reason": "x"}
    )
    assert (too_much.status_code, too_much.json()["code"]) == (422, "exceeds_available")
    key = str(uuid.uuid4())
    body = {"amount": 3000, "reason": "overcharged", "refund_id": key}
    first = await api.post(f"/v1/bills/{bill_id}/refunds", json=body)
    again = await api.post(f"/v1/bills/{bill_id}/refunds", json=body)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"] == key
    assert (first.json()["route"], first.json()["status"]) == ("CHANNEL", "REQUESTED")
    other = await make_agency_with_key(res)
    stranger = AgencyClient(client, other.key_id, other.secret)
    assert (await stranger.post(f"/v1/bills/{bill_id}/refunds", json=body)).status_code == 404
    listed = (await api.get(f"/v1/bills/{bill_id}/refunds")).json()
    assert [r["amount"] for r in listed] == [3000]
