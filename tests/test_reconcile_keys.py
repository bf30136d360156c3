"""Reconciliation matches a statement line by every key the channel gives.

A bank payment confirmed without a prior query carries the bank's own order id in the
day-end file: we know it only by its bank serial. Matched by our order id alone it was both
platform-only and channel-only, and the channel-only half went to suspense — the same money
receipted and parked.
"""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import func, select

import ledger
from channels.base import StatementKind, StatementLine
from gateway.state import Resources
from ledger.models import JournalEntry
from settlement.models import Discrepancy
from settlement.reconcile import reconcile
from tests.factories import make_agency, make_bill, make_item
from tests.settle_helpers import (
    DAY,
    at,
    ledger_verified,  # noqa: F401 - fixture, used below
    make_attempt,
    paid_bill,
    test_confirm,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")

BANK = "bank:102"


async def test_payment_confirmed_without_query_is_matched_by_its_bank_serial(
    res: Resources,
) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        _, _, receipt = await paid_bill(s, agency, item, 2000, channel=BANK)
        await s.commit()
    assert receipt.channel_trade_no
    line = StatementLine(
        channel_trade_no=receipt.channel_trade_no,
        attempt_id=f"bank-{receipt.channel_trade_no}",  # the bank's order id, not ours
        kind=StatementKind.PAYMENT,
        amount=2000,
        fee=0,
        occurred_at=receipt.paid_at,
    )
    result = await reconcile(res.sessions, channel=BANK, day=DAY, lines=[line])
    assert result.counts["matched"] == 1
    assert result.counts["matched_amount"] == 2000
    async with res.sessions() as s:
        assert (await s.scalars(select(Discrepancy))).all() == []
        parked = await s.scalar(
            select(func.count()).select_from(JournalEntry).where(JournalEntry.kind == "suspense")
        )
        assert parked == 0
        assert (await ledger.balances(s)).get(ledger.SUSPENSE, 0) == 0


async def test_lost_payment_of_a_known_serial_heals_through_its_attempt(res: Resources) -> None:
    """Channel-only, with the bank's order id: the attempt is found by its serial."""
    serial = "102" + secrets.token_hex(8).upper()
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        bill = await make_bill(s, agency, [(item, 1, 3000)])
        attempt = await make_attempt(s, bill, 3000, channel=BANK, trade_no=serial)
        await s.commit()
    line = StatementLine(
        channel_trade_no=serial,
        attempt_id=f"bank-{serial}",
        kind=StatementKind.PAYMENT,
        amount=3000,
        fee=0,
        occurred_at=at(hh=15),
    )
    result = await reconcile(
        res.sessions, channel=BANK, day=DAY, lines=[line], confirm=test_confirm
    )
    assert result.healed == 1
    async with res.sessions() as s:
        (d,) = (await s.scalars(select(Discrepancy))).all()
        assert (d.klass, d.attempt_id, d.action) == ("CHANNEL_ONLY", attempt.id, "auto_confirmed")
        assert (await ledger.balances(s)).get(ledger.SUSPENSE, 0) == 0
