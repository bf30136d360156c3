"""A registered card terminal and the simulator playing it, against our service on a real port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, text

import ledger
from billing.models import Agency, Bill
from channels.pos.simulator import SimTerminal
from gateway.state import Resources
from kernel.audit import Actor
from payments.models import PaymentAttempt, Receipt
from payments.pos import terminals
from payments.pos.models import PosTransaction
from tests.factories import make_bill, make_item
from tests.payments_support import bill_for_test, valid_code
from tests.servers import ServerThread

MERCHANT = "898330170110001"
TERMINAL = "POS00001"


@dataclass
class PosWorld:
    res: Resources
    gateway_url: str
    agency: Agency
    sim: SimTerminal

    async def bill(self, amount: int = 20_000) -> Bill:
        async with self.res.sessions() as s:
            item = await make_item(s, code=f"ITEM-{uuid.uuid4().hex[:8]}")
            agency = await s.get_one(Agency, self.agency.id)
            bill = await make_bill(s, agency, [(item, 1, amount)], payment_code=valid_code("FINE"))
            await s.commit()
            return bill

    async def terminal(self, merchant: str, terminal: str, **kw: Any) -> SimTerminal:
        """Another terminal of the same agency (registered), with its own simulator."""
        async with self.res.sessions() as s:
            made = await terminals.register(
                s,
                merchant_id=merchant,
                terminal_id=terminal,
                agency_id=self.agency.id,
                counter="2号窗口",
                actor=Actor("admin", "test"),
            )
            await s.commit()
        return SimTerminal(
            gateway_url=self.gateway_url,
            merchant=merchant,
            terminal=terminal,
            key=made.key.encode(),
            **kw,
        )

    async def state(self, bill_id: uuid.UUID) -> dict[str, Any]:
        """The bill's status, its receipts by kind, its attempts by status, the ledger."""
        async with self.res.sessions() as s:
            bill = await s.get_one(Bill, bill_id)
            await s.refresh(bill)
            receipts = (
                await s.execute(
                    select(Receipt.kind, func.count())
                    .where(Receipt.bill_id == bill_id)
                    .group_by(Receipt.kind)
                )
            ).all()
            attempts = (
                await s.execute(
                    select(PaymentAttempt.status, func.count())
                    .where(PaymentAttempt.bill_id == bill_id)
                    .group_by(PaymentAttempt.status)
                )
            ).all()
            balances = await ledger.balances(s)
            report = await ledger.verify(s)
            pending = await s.scalar(
                text(
                    "SELECT count(*) FROM outbox WHERE processed_at IS NULL"
                    " AND payload->>'event' = 'bill.paid' AND payload->>'bill_id' = :b"
                ),
                {"b": str(bill_id)},
            )
        return {
            "bill": bill.status,
            "paid_amount": bill.paid_amount,
            "receipts": dict(receipts),
            "attempts": dict(attempts),
            "ledger_ok": report.ok,
            "clearing": balances.get("clearing:pos", 0),
            "revenue": balances.get(ledger.REVENUE_PENDING, 0),
            "paid_webhooks_waiting": int(pending or 0),
        }

    async def transactions(self) -> int:
        async with self.res.sessions() as s:
            return int(await s.scalar(select(func.count()).select_from(PosTransaction)) or 0)


@pytest.fixture
async def pos(res: Resources, gateway_server: ServerThread) -> AsyncIterator[PosWorld]:
    async with res.sessions() as s:
        agency, _, _ = await bill_for_test(s)
        made = await terminals.register(
            s,
            merchant_id=MERCHANT,
            terminal_id=TERMINAL,
            agency_id=agency.id,
            counter="1号窗口",
            operator="王",
            actor=Actor("admin", "test"),
        )
        await s.commit()
    sim = SimTerminal(
        gateway_url=gateway_server.url, merchant=MERCHANT, terminal=TERMINAL, key=made.key.encode()
    )
    yield PosWorld(res, gateway_server.url, agency, sim)
    await sim.aclose()


UNPAID = {
    "bill": "ISSUED",
    "paid_amount": 0,
    "ledger_ok": True,
    "clearing": 0,
    "revenue": 0,
    "paid_webhooks_waiting": 0,
}
"""A bill as if no payment ever happened (receipts and attempts are checked apart)."""


def unpaid(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in UNPAID}
