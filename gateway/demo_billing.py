"""Demo billing data: the item catalogue, two agencies with keys, a few bills.

Idempotent: agencies are keyed by credit code and bills by agency bill number. Demo key
secrets are derived at run time from this installation's hash key (never in the repo), so a
re-run prints the same working credentials.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from billing import agencies, catalogue
from billing import bills as svc
from billing.models import Agency, ApiKey, Bill
from gateway.state import Resources
from kernel.audit import Actor
from kernel.clock import SHANGHAI
from kernel.crypto import keyring


def demo_resident_id(first17: str) -> str:
    return first17 + svc.resident_id_check_char(first17)


DEMO_AGENCIES = (
    (
        agencies.make_credit_code("11330100MB0000001"),
        "杭州市公安局交通警察支队（演示）",
        "330100",
        ["FINE-ROAD-TRAFFIC", "FINE-HIGHWAY"],
    ),
    (
        agencies.make_credit_code("12330000MB0000002"),
        "浙江省人事考试院（演示）",
        "330000",
        ["EXAM-CIVIL-SERVICE", "EXAM-ACCT-JUNIOR", "EXAM-ACCT-SENIOR"],
    ),
)


def demo_credentials(credit_code: str) -> tuple[str, str]:
    # Derived from this install's hash key: re-running the demo prints the same credentials.
    digest = keyring().keyed_hash(credit_code, purpose=b"demo-api-key")
    return "pk_demo_" + digest[:6].hex(), "sk_demo_" + base64.urlsafe_b64encode(digest).decode()[
        :40
    ]


async def seed_billing(resources: Resources) -> list[str]:
    lines: list[str] = []
    cfg = svc.BillingConfig(serial_key=resources.settings.billing.serial_key)
    now = datetime.now(UTC)
    today = now.astimezone(SHANGHAI).date()
    async with resources.sessions() as session:
        await catalogue.seed_demo_items(session)
        for credit, name, region, items in DEMO_AGENCIES:
            agency_id = await session.scalar(select(Agency.id).where(Agency.credit_code == credit))
            if agency_id is None:
                agency_id = (
                    await agencies.create_agency(
                        session,
                        credit_code=credit,
                        name=name,
                        region_code=region,
                        item_codes=items,
                        actor="demo",
                    )
                ).id
            key_id, secret = demo_credentials(credit)
            if await session.get(ApiKey, key_id) is None:
                await agencies.create_key(
                    session, agency_id, actor="demo", key_id=key_id, secret=secret
                )
            lines.append(f"demo agency {name}: id={agency_id} key={key_id} secret={secret}")
        await session.commit()

        traffic = await session.scalar(
            select(Agency.id).where(Agency.credit_code == DEMO_AGENCIES[0][0])
        )
        exam = await session.scalar(
            select(Agency.id).where(Agency.credit_code == DEMO_AGENCIES[1][0])
        )
        assert traffic is not None
        assert exam is not None
        person = svc.Payer("PERSON", "张三", demo_resident_id("33010219900101123"), "13800000000")
        demo_bills = [
            (
                traffic,
                svc.NewBill(
                    "DEMO-JJ-0001",
                    person,
                    (svc.Line("FINE-ROAD-TRAFFIC", 1, 20_000),),
                    today + timedelta(days=15),
                    now + timedelta(days=365),
                    "闯红灯（演示）",
                ),
            ),
            (
                traffic,
                svc.NewBill(
                    "DEMO-JJ-0002",
                    svc.Payer("PERSON", "李四", demo_resident_id("33010619850505456")),
                    (svc.Line("FINE-HIGHWAY", 1, 20_000),),
                    today - timedelta(days=10),  # overdue: the response shows a late fee
                    now + timedelta(days=365),
                    "超速（演示）",
                ),
            ),
            (
                exam,
                svc.NewBill(
                    "DEMO-KS-0001",
                    person,
                    (svc.Line("EXAM-ACCT-JUNIOR", 2, 6_000),),
                    today + timedelta(days=7),
                    now + timedelta(days=7),
                    "初级会计 2 科（演示）",
                ),
            ),
        ]
        for agency_id, bill in demo_bills:
            number, code = await _payable(session, agency_id, bill, cfg)
            lines.append(f"demo bill {number}: payment code {code}")
        await session.commit()
    return lines


async def _payable(
    session: AsyncSession, agency_id: uuid.UUID, bill: svc.NewBill, cfg: svc.BillingConfig
) -> tuple[str, str]:
    """The demo bill to pay now: the first of its kind while it is unpaid; once the demo
    paid it (or it expired), a new one numbered after it (`DEMO-JJ-0001-2`), so every start
    of the demo has a bill of each kind to pay."""
    stmt = (
        select(Bill.agency_bill_no, Bill.payment_code, Bill.status)
        .where(
            Bill.agency_id == agency_id,
            or_(
                Bill.agency_bill_no == bill.agency_bill_no,
                Bill.agency_bill_no.startswith(f"{bill.agency_bill_no}-", autoescape=True),
            ),
        )
        .order_by(Bill.issued_at)
    )
    made = (await session.execute(stmt)).all()
    for number, code, status in made:
        if status == "ISSUED":
            return number, code
    if made:
        bill = msgspec.structs.replace(
            bill, agency_bill_no=f"{bill.agency_bill_no}-{len(made) + 1}"
        )
    (result,) = await svc.issue_bills(
        session, agency_id, [bill], config=cfg, actor=Actor("system", "demo")
    )
    assert result.payment_code is not None, result
    return bill.agency_bill_no, result.payment_code
