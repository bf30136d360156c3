"""A bank confirmation sent without a prior query and lost (the server was dying, the bank
did not retry) is healed by the day-end statement: one receipt, through the confirmation
path, shown as healed — and a later retry of the confirmation is answered as a repeat."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import func, select

import ledger
from channels.base import ConfirmPayment, Outcome
from gateway.state import Resources
from kernel.clock import business_date
from ledger.models import JournalEntry
from payments.inbound import Sent
from payments.inbound import confirm as confirm_inbound
from payments.models import PaymentAttempt, Receipt
from settlement.models import Discrepancy
from settlement.reconcile import channel_confirm, exactly_once_confirm, reconcile
from tests.payments_support import BankWorld, bill_for_test

BANK = "bank:102"


async def test_lost_confirmation_without_query_is_healed_by_the_day_end_file(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=2_000)
    out = await world.customer_pays(
        "102", bill.payment_code, skip_query=True, drop_confirm=True, amount=2_000
    )
    serial = out["bank_serial"]
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 0

    adapter = world.channels.get(BANK)
    today = business_date(datetime.now(UTC))
    raw = await adapter.fetch_statement(today)
    lines = list(adapter.parse_statement(raw))
    mine = [ln for ln in lines if ln.channel_trade_no == serial]
    assert [(ln.payment_code, ln.amount) for ln in mine] == [(bill.payment_code, 2_000)]

    result = await reconcile(
        res.sessions,
        channel=BANK,
        day=today,
        lines=lines,
        content_hash=hashlib.sha256(raw).digest(),
        confirm=exactly_once_confirm(world.ctx),
        confirm_by_code=channel_confirm(world.ctx),
    )
    assert result.healed == 1
    assert result.counts["healed"] == 1
    async with res.sessions() as s:
        receipts = (await s.scalars(select(Receipt))).all()
        assert [(r.channel_trade_no, r.kind, r.amount) for r in receipts] == [
            (serial, "PAYMENT", 2_000)
        ]
        (d,) = (
            await s.scalars(select(Discrepancy).where(Discrepancy.channel_trade_no == serial))
        ).all()
        assert (d.klass, d.status, d.action) == (
            "CHANNEL_ONLY",
            "RESOLVED",
            "healed_from_statement",
        )
        assert d.payment_code == bill.payment_code
        parked = await s.scalar(
            select(func.count())
            .select_from(JournalEntry)
            .where(JournalEntry.ref == f"{BANK}:{serial}")
        )
        assert parked == 0

    # The bank retries after all: the same payment, answered as a repeat of the receipt.
    retry = await confirm_inbound(
        world.ctx,
        Sent(BANK),
        ConfirmPayment(
            payment_code=bill.payment_code,
            reference=serial,
            amount=2_000,
            paid_at=mine[0].occurred_at,
        ),
        datetime.now(UTC),
    )
    assert retry.outcome == Outcome.OK
    assert retry.receipt is not None
    assert retry.receipt.receipt_id == str(receipts[0].id)
    # And the file again (a re-run): matched by the serial, nothing new.
    again = await reconcile(
        res.sessions,
        channel=BANK,
        day=today,
        confirm=exactly_once_confirm(world.ctx),
        confirm_by_code=channel_confirm(world.ctx),
    )
    assert again.healed == 0
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 1
        report = await ledger.verify(s)
    assert report.ok, report
