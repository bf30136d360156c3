"""A second charge under an order already paid, reconciled: the channel's statement line
for it carries the ORIGINAL order id but its own number, and is paired with our DUPLICATE
receipt (by that number), not with the order's first receipt. Its refund line is matched by
our refund id. A receipt is paired with one line at most: a second charge that never
reached us is money the channel has and we do not, not a second match of the first.

Kiosk and bank over real HTTP (the simulators, the production adapters fetching their
statements); real PostgreSQL.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select

from channels.base import ChannelAdapter, StatementLine
from gateway.state import Resources
from kernel.clock import SHANGHAI
from payments.context import PaymentContext
from payments.models import Receipt, Refund
from payments.refunds import execute_refunds
from settlement.models import Discrepancy
from settlement.reconcile import ReconResult, exactly_once_confirm, reconcile
from tests.kiosk_support import KioskWorld
from tests.payments_support import BankWorld, bill_for_test

BANK = "102"


async def _reconcile_refs(
    res: Resources, ctx: PaymentContext, channel: str, refs: set[str]
) -> tuple[ReconResult, list[StatementLine]]:
    """The channel's real day statement, kept to this test's charges (the simulator is shared
    by the session's tests), reconciled with the auto-heal on."""
    day = datetime.now(SHANGHAI).date()
    adapter: ChannelAdapter = ctx.channels.get(channel)
    raw = await adapter.fetch_statement(day)
    lines = [x for x in adapter.parse_statement(raw) if x.channel_trade_no in refs]
    result = await reconcile(
        res.sessions, channel=channel, day=day, lines=lines, confirm=exactly_once_confirm(ctx)
    )
    return result, lines


async def _discrepancies(res: Resources) -> list[Discrepancy]:
    async with res.sessions() as s:
        return list(await s.scalars(select(Discrepancy)))


async def _assert_duplicate_reconciled(
    res: Resources,
    result: ReconResult,
    lines: list[StatementLine],
    *,
    order_id: str,
    first_ref: str,
    second_ref: str,
) -> None:
    # The statement names the order for both charges, and lists the refund of the second.
    kinds = sorted((x.kind.value, x.channel_trade_no, x.attempt_id) for x in lines)
    assert kinds == sorted(
        [
            ("PAYMENT", first_ref, order_id),
            ("PAYMENT", second_ref, order_id),
            ("REFUND", second_ref, kinds[-1][2]),
        ]
    ), kinds
    async with res.sessions() as s:
        receipts = {r.kind: r for r in await s.scalars(select(Receipt))}
        refund = await s.scalar(select(Refund))
    assert set(receipts) == {"PAYMENT", "DUPLICATE"}
    assert refund is not None
    assert (refund.receipt_id, refund.status) == (receipts["DUPLICATE"].id, "SUCCEEDED")
    assert [x.refund_id for x in lines if x.kind.value == "REFUND"] == [str(refund.id)]

    # Each receipt matched by its own line: nothing only on our side, nothing only on the
    # channel's, the refund matched; the duplicate known and closed as its refund is done.
    assert result.counts["matched"] == 2
    assert result.counts["statement_payments"] == 2
    assert result.counts["receipts"] == 2
    assert result.healed == 0
    found = await _discrepancies(res)
    assert [(d.klass, d.status, d.action, d.receipt_id) for d in found] == [
        ("DUPLICATE_PAYMENT", "RESOLVED", "auto_refund_in_progress", receipts["DUPLICATE"].id)
    ]
    assert found[0].channel_trade_no == second_ref
    # Re-run: the same, nothing reopened, no second refund.
    day = result.business_date
    again = await reconcile(res.sessions, channel=result.channel, day=day)
    assert again.counts["matched"] == 2
    assert [(d.klass, d.status) for d in await _discrepancies(res)] == [
        ("DUPLICATE_PAYMENT", "RESOLVED")
    ]
    async with res.sessions() as s:
        assert len((await s.scalars(select(Refund))).all()) == 1


async def test_kiosk_second_charge_and_its_refund_reconcile(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = f"K-{secrets.token_hex(4)}"
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_500)
    out = await kiosk_world.pay(dev, bill.payment_code, charge_twice=True)
    again = out["again"]
    assert again["confirms"][0]["data"]["disposition"] == "REFUND"
    assert await execute_refunds(kiosk_world.ctx) == 1  # back through the acquirer

    result, lines = await _reconcile_refs(
        res, kiosk_world.ctx, "kiosk", {out["acquirer_ref"], again["acquirer_ref"]}
    )
    await _assert_duplicate_reconciled(
        res,
        result,
        lines,
        order_id=out["order_id"],
        first_ref=out["acquirer_ref"],
        second_ref=again["acquirer_ref"],
    )


async def test_bank_second_debit_and_its_refund_reconcile(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=6_600)
    first = await world.customer_pays(BANK, bill.payment_code)
    second = await world.customer_pays(
        BANK, bill.payment_code, skip_query=True, amount=6_600, order_id=first["order_id"]
    )
    assert second["confirms"][0]["data"]["disposition"] == "REFUND"
    assert await execute_refunds(world.ctx) == 1  # back through the bank

    result, lines = await _reconcile_refs(
        res, world.ctx, f"bank:{BANK}", {first["bank_serial"], second["bank_serial"]}
    )
    await _assert_duplicate_reconciled(
        res,
        result,
        lines,
        order_id=first["order_id"],
        first_ref=first["bank_serial"],
        second_ref=second["bank_serial"],
    )


async def test_a_second_charge_we_never_heard_of_is_not_a_second_match(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    """The kiosk charged again under the paid order and its confirmation never came: the
    line names the order, whose receipt is already the first charge's. It is the channel's
    money we do not hold (open for a person: the order cannot take a second trade), never
    the first receipt matched twice."""
    dev = f"K-{secrets.token_hex(4)}"
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=4_400)
    out = await kiosk_world.pay(dev, bill.payment_code)
    lost = await kiosk_world.pay(
        dev,
        bill.payment_code,
        again_under={"order_id": out["order_id"], "amount": 4_400},
        offline=True,
    )
    assert lost["confirms"] == []

    result, _ = await _reconcile_refs(
        res, kiosk_world.ctx, "kiosk", {out["acquirer_ref"], lost["acquirer_ref"]}
    )
    assert (result.counts["matched"], result.counts["statement_payments"]) == (1, 2)
    found = await _discrepancies(res)
    assert [(d.klass, d.status, d.channel_trade_no, d.channel_amount) for d in found] == [
        ("CHANNEL_ONLY", "OPEN", lost["acquirer_ref"], 4_400)
    ]
    assert str(found[0].attempt_id) == out["order_id"]
    async with res.sessions() as s:
        assert len((await s.scalars(select(Receipt))).all()) == 1  # nothing healed wrongly
