"""A paid overdue fine keeps showing what was paid, wherever the amount is shown.

The fine was due 10 days ago and paid 6 days ago, on overdue day 4 (3% a day: 1 200 fen on
10 000). Recomputed for today it would be 3 000. The payer's summary and cashier page, the
agency's bill and CSV export show 11 200 — paid, settled or refunded alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from billing import payer
from billing.models import Agency, Bill, RevenueItem
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from kernel.clock import shanghai_today
from payments.confirm import confirm_payment
from tests.agency_client import AgencyClient, make_agency_with_key
from tests.factories import make_bill
from tests.payments_support import valid_code
from tests.settle_helpers import make_attempt

PRINCIPAL = 10_000
PAID = 11_200  # principal + 4 days x 3%


@pytest.fixture
async def http(res: Resources, bank_settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(bank_settings)) as c:
        yield c


async def _paid_overdue_fine(res: Resources) -> tuple[AgencyClient | None, Bill, object]:
    signed = await make_agency_with_key(res)
    now = datetime.now(UTC)
    today = shanghai_today(now)
    async with res.sessions() as s:
        agency = await s.get_one(Agency, signed.agency_id)
        item = await s.get_one(RevenueItem, "FINE-ROAD-TRAFFIC")
        assert item.late_fee_rule == "FINE_DAILY_3PCT"
        bill = await make_bill(
            s,
            agency,
            [(item, 1, PRINCIPAL)],
            due_date=today - timedelta(days=10),
            payment_code=valid_code(),
        )
        attempt = await make_attempt(s, bill, PAID)
        await s.commit()
    paid_at = now - timedelta(days=6)
    assert payer.due_on(bill, shanghai_today(paid_at)).total == PAID
    assert payer.due_on(bill, today).total == 13_000
    result = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="2026PAIDLATE01",
        amount=PAID,
        paid_at=paid_at,
        source="test",
    )
    assert result.acknowledged
    return None, bill, signed


@pytest.mark.parametrize("status", ["PAID", "SETTLED", "PARTIALLY_REFUNDED", "REFUNDED"])
async def test_a_paid_overdue_fine_shows_what_was_paid_everywhere(
    res: Resources, http: AsyncTestClient[Litestar], status: str
) -> None:
    _, bill, signed = await _paid_overdue_fine(res)
    async with res.sessions() as s:
        await s.execute(update(Bill).where(Bill.id == bill.id).values(status=status))
        await s.commit()
    await payer.invalidate(res.redis, bill.payment_code)

    summary = (await http.get(f"/v1/pay/{bill.payment_code}")).json()
    assert (summary["amount_due"], summary["late_fee"], summary["overdue_days"]) == (
        PAID,
        1_200,
        4,
    )
    assert summary["payable"] is False
    page = (await http.get(f"/pay/{bill.payment_code}")).text
    assert "112.00" in page
    assert "130.00" not in page

    api = AgencyClient(http, signed.key_id, signed.secret)  # type: ignore[attr-defined]
    one = (await api.get(f"/v1/bills/{bill.id}")).json()
    assert one["amount_due_today"]["total"] == PAID
    assert one["amount_due_today"]["late_fee"] == 1_200
    exported = await api.get("/v1/bills", headers={"accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["amount_due_today"] for r in rows] == [str(PAID)]


async def test_an_unpaid_overdue_fine_still_shows_todays_late_fee(
    res: Resources, http: AsyncTestClient[Litestar]
) -> None:
    signed = await make_agency_with_key(res)
    today = shanghai_today(datetime.now(UTC))
    async with res.sessions() as s:
        agency = await s.get_one(Agency, signed.agency_id)
        item = await s.get_one(RevenueItem, "FINE-ROAD-TRAFFIC")
        bill = await make_bill(
            s,
            agency,
            [(item, 1, PRINCIPAL)],
            due_date=today - timedelta(days=10),
            payment_code=valid_code(),
        )
        await s.commit()
    summary = (await http.get(f"/v1/pay/{bill.payment_code}")).json()
    assert summary["amount_due"] == 13_000
