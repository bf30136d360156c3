"""The shared test builders produce rows the schema's constraints accept."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from billing.models import Bill, BillLine
from gateway.state import Resources
from tests.factories import make_agency, make_bill, make_item


async def test_bill_with_lines(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        bill = await make_bill(s, agency, [(item, 2, 10_000)])
        await s.commit()
        assert bill.principal_amount == 20_000
        assert await s.scalar(select(func.count()).select_from(BillLine)) == 1
        assert await s.scalar(select(Bill.status)) == "ISSUED"


async def test_split_must_sum_to_100_percent(res: Resources) -> None:
    async with res.sessions() as s:
        with pytest.raises(IntegrityError):
            await make_item(s, split={2: 5000, 3: 4000})
