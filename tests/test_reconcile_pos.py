"""The card terminals' acquirer settlement file reconciled end to end: terminals book every
card transaction at the simulated acquirer and tell our service over real HTTP; the
production POS adapter fetches the day's file over HTTP; settlement.reconcile classifies."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select

import ledger
from channels.pos import transforms as t
from channels.pos.simulator import SimTerminal
from kernel.clock import SHANGHAI
from payments.refunds import execute_refunds
from settlement.models import Discrepancy
from settlement.reconcile import ReconResult, exactly_once_confirm, load_statement, reconcile
from tests.pos_acquirer_support import Acquirer, acquirer, duplicate_sale, second_terminal
from tests.pos_support import TERMINAL, PosWorld, pos

__all__ = ["acquirer", "pos", "second_terminal"]  # fixtures, used by name below


def _today() -> date:
    return datetime.now(SHANGHAI).date()


async def _reconcile(acq: Acquirer, pos: PosWorld, fee_rate_bp: int | None = 38) -> ReconResult:
    day = _today()
    lines, digest = await load_statement(acq.ctx.channels.get("pos"), day)
    return await reconcile(
        pos.res.sessions,
        channel="pos",
        day=day,
        lines=lines,
        content_hash=digest,
        fee_rate_bp=fee_rate_bp,
        confirm=exactly_once_confirm(acq.ctx),
    )


async def _found(pos: PosWorld) -> dict[tuple[str, str], Discrepancy]:
    async with pos.res.sessions() as s:
        rows = await s.scalars(select(Discrepancy))
        return {(d.klass, d.match_key): d for d in rows}


async def _sale(pos: PosWorld, amount: int, **switches: Any) -> str:
    """A paid sale (or a switched one); its reference, as the acquirer's file keys it."""
    bill = await pos.bill(amount)
    out = await pos.sim.sale(bill.payment_code, amount, **switches)
    return t.trade_no(TERMINAL, out["batch_no"], out["trace_no"])


async def _fees(pos: PosWorld) -> int:
    async with pos.res.sessions() as s:
        return (await ledger.balances(s)).get("channel_fees:pos", 0)


async def test_a_clean_day_matches_and_its_fees_are_posted(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    await _sale(pos, 10_000)
    await _sale(pos, 25_000)
    await _sale(pos, 7_000, lose_answer=True)  # reversed at both ends: absent from the file
    voided = await _sale(pos, 3_000)
    assert (await pos.sim.void(voided[-6:])).answer["code"] == "00"  # type: ignore[index]
    given = await _sale(pos, 4_000)
    assert (await pos.sim.settle()).answer["code"] == "00"  # type: ignore[index]
    back = await pos.sim.refund("000001", given[-6:], 1_500)  # 退货 of a settled sale
    assert back.answer is not None
    assert back.answer["code"] == "00"
    dup = await duplicate_sale(pos, second_terminal, 5_000)
    assert await execute_refunds(acquirer.ctx) == 1  # the duplicate goes back to the card

    file = await acquirer.state()
    assert {x["state"] for x in file["sales"]} == {"APPROVED", "REVERSED", "VOIDED"}
    result = await _reconcile(acquirer, pos)

    # Every sale of ours (both sides of the duplicate race, and of any race that came out
    # otherwise first) matched; the voided one flagged, the reversed one absent; both
    # refunds (the terminal's known by its RRN, ours by our id) found.
    approved = [x["amount"] for x in file["sales"] if x["state"] == "APPROVED"]
    assert len(approved) >= 5
    assert result.counts["statement_payments"] == len(approved)
    assert result.counts["matched"] == len(approved)
    assert result.counts["receipts"] == len(approved)
    found = await _found(pos)
    assert [(k, d.status, d.action) for (k, _), d in found.items()] == [
        ("DUPLICATE_PAYMENT", "RESOLVED", "auto_refund_in_progress")
    ]
    assert found[("DUPLICATE_PAYMENT", str(dup.attempt_id))].channel_amount == 5_000
    # The acquirer's fee (0.38% of each settled sale, half up) is posted as the day's fee.
    fees = sum((a * 38 + 5000) // 10000 for a in approved)
    assert result.counts["fees"] == fees
    assert await _fees(pos) == fees
    async with pos.res.sessions() as s:
        assert (await ledger.verify(s)).ok

    again = await _reconcile(acquirer, pos)  # the same file again: nothing new
    assert again.duplicate_file
    assert await _fees(pos) == fees


async def test_each_difference_of_a_card_day_is_its_own_discrepancy(
    pos: PosWorld, acquirer: Acquirer
) -> None:
    kept = await _sale(pos, 10_000)
    missing = await _sale(pos, 11_000)
    more = await _sale(pos, 12_000)
    reversed_ = await _sale(pos, 13_000, lose_answer=True)
    voided = await _sale(pos, 14_000)
    assert (await pos.sim.void(voided[-6:])).answer["code"] == "00"  # type: ignore[index]
    stranger = {
        "merchant_id": "898330170110009",
        "terminal_id": "POS00009",
        "batch_no": "000001",
        "trace_no": "000001",
        "rrn": "999999999999",
        "card": "622848******0000",
        "amount": 9_900,
        "fee": 38,
        "time": t.format_time(datetime.now(UTC)),
    }
    unknown_refund = stranger | {"kind": "REFUND", "rrn": "888888888888", "amount": -500, "fee": 0}
    await acquirer.control(
        "statement",
        omit=[missing],
        amount_delta={more: 100},
        settle_reversed=[reversed_, voided],
        extra=[stranger | {"kind": "SALE"}, unknown_refund],
    )
    result = await _reconcile(acquirer, pos)
    found = await _found(pos)

    def one(klass: str, key: str) -> Discrepancy:
        return found[(klass, key)]

    assert result.counts["matched"] == 1  # `kept`
    assert kept not in {d.channel_trade_no for d in found.values()}
    # We recorded the sale; the acquirer does not list it (yet): held for the late file.
    gone = [d for (k, _), d in found.items() if k == "PLATFORM_ONLY"]
    assert [(d.channel_trade_no, d.status, d.our_amount) for d in gone] == [
        (missing, "HELD", 11_000)
    ]
    differs = [d for (k, _), d in found.items() if k == "AMOUNT_MISMATCH"]
    assert [(d.channel_trade_no, d.our_amount, d.channel_amount) for d in differs] == [
        (more, 12_000, 12_100)
    ]
    # Sales the terminal took back (冲正, 撤销) that the acquirer settled anyway.
    settled = one("REVERSED_SETTLED", reversed_), one("REVERSED_SETTLED", voided)
    assert [(d.status, d.our_amount, d.channel_amount) for d in settled] == [
        ("OPEN", 13_000, 13_000),
        ("OPEN", 14_000, 14_000),
    ]
    assert all(d.receipt_id is not None and d.attempt_id is not None for d in settled)
    # A sale we never heard of, naming nothing of ours: parked in suspense.
    theirs = one("CHANNEL_ONLY", "POS00009000001000001")
    assert (theirs.status, theirs.action, theirs.channel_amount) == (
        "OPEN",
        "parked_in_suspense",
        9_900,
    )
    async with pos.res.sessions() as s:
        assert (await ledger.balances(s)).get(ledger.SUSPENSE) == -9_900
    # A refund the acquirer made that we have no record of.
    assert one("STATUS_MISMATCH", "888888888888").channel_amount == 500
    assert {k for k, _ in found} == {
        "PLATFORM_ONLY",
        "AMOUNT_MISMATCH",
        "REVERSED_SETTLED",
        "CHANNEL_ONLY",
        "STATUS_MISMATCH",
    }


async def test_a_fee_off_the_configured_rate_is_reported_and_posted_as_charged(
    pos: PosWorld, acquirer: Acquirer
) -> None:
    await acquirer.control("statement", fee_bp=60)
    ref = await _sale(pos, 10_000)
    result = await _reconcile(acquirer, pos, fee_rate_bp=38)
    found = await _found(pos)
    fee = [d for (k, _), d in found.items() if k == "FEE_MISMATCH"]
    assert [(d.channel_trade_no, d.channel_fee, d.expected_fee) for d in fee] == [(ref, 60, 38)]
    assert result.counts["matched"] == 1
    assert await _fees(pos) == 60
