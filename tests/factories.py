"""ORM-level builders for tests that need agencies, items and bills in the database.

They write rows directly (no API), so tests of payments, settlement and e-notes do not
depend on the billing API's request shapes.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Agency, AgencyItem, Bill, BillLine, RevenueItem
from billing.payment_code import compose
from billing.personal import seal_payer_name


def random_credit_code() -> str:
    # Shape only; the billing package validates the real check character.
    return "12" + "".join(secrets.choice("0123456789") for _ in range(16))


async def make_item(
    session: AsyncSession,
    code: str = "103050101001-01",
    *,
    name: str = "道路交通违法罚款",
    category: str = "FINE",
    budget_subject: str = "103050101001",
    split: dict[int, int] | None = None,
    fixed_amount: int | None = None,
    min_amount: int | None = 1,
    max_amount: int | None = 100_000_000,
    late_fee_rule: str = "NONE",
    refundable: bool = True,
) -> RevenueItem:
    split = split or {2: 10000}
    item = RevenueItem(
        code=code,
        name=name,
        category=category,
        budget_subject=budget_subject,
        fixed_amount=fixed_amount,
        min_amount=None if fixed_amount else min_amount,
        max_amount=None if fixed_amount else max_amount,
        late_fee_rule=late_fee_rule,
        refundable=refundable,
        active_from=date(2020, 1, 1),
        **{f"split_l{level}_bp": split.get(level, 0) for level in range(1, 7)},
    )
    session.add(item)
    await session.flush()
    return item


async def make_agency(
    session: AsyncSession,
    *,
    name: str = "某市公安局交通警察支队",
    region_code: str = "330100",
    items: list[RevenueItem] | None = None,
    webhook_url: str | None = None,
) -> Agency:
    agency = Agency(
        credit_code=random_credit_code(),
        name=name,
        region_code=region_code,
        webhook_url=webhook_url,
    )
    session.add(agency)
    await session.flush()
    for item in items or []:
        session.add(AgencyItem(agency_id=agency.id, item_code=item.code))
    await session.flush()
    return agency


async def make_bill(
    session: AsyncSession,
    agency: Agency,
    lines: list[tuple[RevenueItem, int, int]],
    *,
    status: str = "ISSUED",
    payer_name: str = "张三",
    payer_type: str = "PERSON",
    due_date: date | None = None,
    expires_at: datetime | None = None,
    payment_code: str | None = None,
) -> Bill:
    """lines: (item, quantity, unit_amount in fen)."""
    total = sum(q * u for _, q, u in lines)
    bill_id = uuid.uuid4()
    bill = Bill(
        id=bill_id,
        agency_id=agency.id,
        agency_bill_no=f"T-{uuid.uuid4().hex[:12]}",
        request_hash=secrets.token_bytes(32),
        payment_code=payment_code
        or compose("330100", 26, lines[0][0].category, secrets.randbelow(10**9)),
        category=lines[0][0].category,
        # Fixed at issuance from the items, as billing.bills does (one rule per bill).
        late_fee_rule=lines[0][0].late_fee_rule,
        status=status,
        payer_type=payer_type,
        payer_name_enc=seal_payer_name(bill_id, payer_name),
        principal_amount=total,
        due_date=due_date or date.today() + timedelta(days=15),  # noqa: DTZ011
        expires_at=expires_at or datetime.now(UTC) + timedelta(days=30),
    )
    session.add(bill)
    await session.flush()
    for n, (item, qty, unit) in enumerate(lines, start=1):
        session.add(
            BillLine(
                bill_id=bill.id,
                line_no=n,
                item_code=item.code,
                quantity=qty,
                unit_amount=unit,
                amount=qty * unit,
            )
        )
    await session.flush()
    return bill
