"""A kiosk day reconciled end to end: simulated kiosks charge through the simulated acquirer
and confirm to our service over real HTTP; the production kiosk adapter fetches the
acquirer's day statement over HTTP; settlement.reconcile matches, heals and reports."""

from __future__ import annotations

import json
import secrets
from datetime import datetime

from sqlalchemy import select

import ledger
from billing.models import Bill
from gateway.state import Resources
from kernel.clock import SHANGHAI
from settlement.models import Discrepancy
from settlement.reconcile import exactly_once_confirm, load_statement, reconcile
from tests.kiosk_support import KioskWorld
from tests.payments_support import bill_for_test


async def test_a_kiosk_day_is_matched_healed_and_reported(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = f"K-{secrets.token_hex(4)}"
    await kiosk_world.register(dev)
    bills: dict[str, Bill] = {}
    for name, amount in (("paid", 1_000), ("offline", 2_000), ("unmatched", 3_000)):
        async with res.sessions() as s:
            bills[name] = (await bill_for_test(s, amount=amount))[2]
    async with res.sessions() as s:
        stray = (await bill_for_test(s, amount=4_000))[2]

    paid = await kiosk_world.pay(dev, bills["paid"].payment_code)
    # Charged at the acquirer under our order, the confirmation never sent (kept offline).
    offline = await kiosk_world.pay(dev, bills["offline"].payment_code, offline=True)
    assert offline["confirms"] == []
    # Confirmed to us, but (below) the acquirer's file leaves it out.
    unmatched = await kiosk_world.pay(dev, bills["unmatched"].payment_code)
    # Charged with no order of ours and never confirmed: money naming nothing we know.
    strayed = await kiosk_world.pay(dev, stray.payment_code, offline=True, no_order=True)

    day = datetime.now(SHANGHAI).date()
    adapter = kiosk_world.ctx.channels.get("kiosk")
    raw = await adapter.fetch_statement(day)
    # The simulated acquirer serves the whole test session: this test's charges only.
    ours = {x["acquirer_ref"] for x in (paid, offline, unmatched, strayed)}
    rows = [json.loads(x) for x in raw.decode().splitlines() if x.strip()]
    rows = [r for r in rows if r["reference"] in ours]
    assert len(rows) == 4
    kept = [r for r in rows if r["reference"] != unmatched["acquirer_ref"]]
    file = "".join(json.dumps(r) + "\n" for r in kept).encode()
    lines, digest = await load_statement(adapter, day, file)
    result = await reconcile(
        res.sessions,
        channel="kiosk",
        day=day,
        lines=lines,
        content_hash=digest,
        confirm=exactly_once_confirm(kiosk_world.ctx),
    )

    assert result.counts["matched"] == 1  # `paid`
    assert result.healed == 1  # `offline`, confirmed from the statement
    async with res.sessions() as s:
        found = {(d.klass, d.channel_trade_no): d for d in await s.scalars(select(Discrepancy))}
        healed_bill = await s.get_one(Bill, bills["offline"].id)
        balances = await ledger.balances(s)
        assert (await ledger.verify(s)).ok
    healed = found[("CHANNEL_ONLY", offline["acquirer_ref"])]
    assert (healed.status, healed.action) == ("RESOLVED", "auto_confirmed")
    assert str(healed.attempt_id) == offline["order_id"]
    assert healed_bill.status == "PAID"
    missing = found[("PLATFORM_ONLY", unmatched["acquirer_ref"])]
    assert (missing.status, missing.our_amount) == ("HELD", 3_000)
    strays = [d for (k, _), d in found.items() if k == "CHANNEL_ONLY" and d.attempt_id is None]
    assert [(d.status, d.action, d.channel_amount) for d in strays] == [
        ("OPEN", "parked_in_suspense", 4_000)
    ]
    assert balances[ledger.SUSPENSE] == -4_000
    assert len(found) == 3
    assert paid["acquirer_ref"] not in {trade for _, trade in found}
