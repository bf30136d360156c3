"""The card terminals' acquirer as a channel we call: duplicate sales refunded through it,
its failures retried by the refund executor, its forged answers ignored (the production
adapter against the simulated acquirer over real HTTP)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from billing.models import Bill
from channels.base import ChannelRegistry, Rejected, StatementKind
from channels.pos import transforms as t
from channels.pos.adapter import (
    PosAdapter,
    SettlementRow,
    acquirer_scheme,
    parse_settlement_file,
    render_settlement_file,
)
from channels.pos.simulator import SimTerminal
from gateway.procs import free_port
from kernel.models import OutboxMessage
from payments.models import Receipt, Refund
from payments.refunds import execute_refunds, recover_refunds
from tests.pos_acquirer_support import (
    SECRET,
    Acquirer,
    acquirer,
    duplicate_sale,
    second_terminal,
)
from tests.pos_support import PosWorld, pos

__all__ = ["acquirer", "pos", "second_terminal"]  # fixtures, used by name below


async def _refund_of(pos: PosWorld, receipt: Receipt) -> Refund:
    async with pos.res.sessions() as s:
        refund = await s.scalar(select(Refund).where(Refund.receipt_id == receipt.id))
        assert refund is not None
        return refund


def _given_back(state: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(r["refund_id"], r["reference"], r["amount"]) for r in state["refunds"]]


async def test_a_duplicate_sale_is_refunded_through_the_acquirer(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    assert dup.channel == "pos"
    refund = await _refund_of(pos, dup)
    assert refund.status == "REQUESTED"

    assert await execute_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    async with pos.res.sessions() as s:
        receipt = await s.get_one(Receipt, dup.id)
        bill = await s.get_one(Bill, dup.bill_id)
    assert (refund.status, refund.amount) == ("SUCCEEDED", 10_000)
    assert receipt.refunded_amount == 10_000
    assert bill.status == "PAID"  # the bill's own payment is untouched
    state = await acquirer.state()
    # The card sale the acquirer booked, named by terminal, batch and trace, is given back.
    assert _given_back(state) == [(str(refund.id), dup.channel_trade_no, 10_000)]
    # Told B2 with the disposition REFUND, the terminal left its card sale alone.
    booked = {s["ref"]: s["state"] for s in state["sales"]}
    assert booked[dup.channel_trade_no] == "APPROVED"
    assert await execute_refunds(acquirer.ctx) == 0
    assert len((await acquirer.state())["refunds"]) == 1


async def test_a_refusal_fails_the_refund_for_finance(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    await acquirer.control("faults", refuse=1)
    assert await execute_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    assert (refund.status, refund.failure_code) == ("FAILED", "51")
    async with pos.res.sessions() as s:
        assert (await s.get_one(Receipt, dup.id)).refunded_amount == 0  # released
    assert (await acquirer.state())["refunds"] == []


async def test_a_lost_answer_is_queried_and_recorded_once(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    await acquirer.control("faults", lose=1)
    assert await execute_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    assert refund.status == "UNKNOWN"  # done at the acquirer, but we never heard
    assert len((await acquirer.state())["refunds"]) == 1

    assert await recover_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    assert refund.status == "SUCCEEDED"
    assert _given_back(await acquirer.state()) == [(str(refund.id), dup.channel_trade_no, 10_000)]


async def test_a_busy_acquirer_is_asked_again_and_the_refund_sent_once(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    await acquirer.control("faults", busy=1)
    assert await execute_refunds(acquirer.ctx) == 1
    assert (await _refund_of(pos, dup)).status == "UNKNOWN"
    assert (await acquirer.state())["refunds"] == []

    # The query finds nothing there: sent again under the same refund id.
    assert await recover_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    assert refund.status == "SUCCEEDED"
    assert _given_back(await acquirer.state()) == [(str(refund.id), dup.channel_trade_no, 10_000)]


async def test_a_forged_answer_changes_nothing(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    await acquirer.control("faults", forge=1)
    assert await execute_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    # "Success", but not signed by the acquirer: not believed, the outcome is unknown.
    assert (refund.status, refund.completed_at) == ("UNKNOWN", None)
    async with pos.res.sessions() as s:
        assert (await s.get_one(Receipt, dup.id)).refunded_amount == 10_000  # still reserved
    assert (await acquirer.state())["refunds"] == []

    assert await recover_refunds(acquirer.ctx) == 1
    assert (await _refund_of(pos, dup)).status == "SUCCEEDED"
    assert len((await acquirer.state())["refunds"]) == 1


def test_the_settlement_file_reads_back_and_a_cut_file_is_refused() -> None:
    when = datetime(2026, 12, 6, 10, 30, tzinfo=t.SHANGHAI)
    rows = [
        SettlementRow(
            "898330170110001",
            "POS00001",
            "000001",
            "000007",
            "634512098812",
            "622848******1234",
            "SALE",
            10_000,
            38,
            when,
        ),
        SettlementRow(
            "898330170110001",
            "POS00001",
            "000001",
            "000008",
            "634512098813",
            "622848******5678",
            "VOID",
            2_000,
            0,
            when,
            "",
            "000001",
            "000008",
        ),
        SettlementRow(
            "898330170110001",
            "POS00001",
            "000001",
            "000000",
            "634512098814",
            "622848******1234",
            "REFUND",
            -3_000,
            0,
            when,
            "r-1",
            "000001",
            "000007",
        ),
    ]
    raw = render_settlement_file(when.date(), rows)
    assert raw.decode().splitlines()[0] == "POSSTL1|20261206|3|70.00|0.38|69.62"
    assert list(parse_settlement_file(raw)) == rows
    lines = list(PosAdapter().parse_statement(raw))
    assert [(x.kind, x.channel_trade_no, x.amount, x.fee, x.refund_id) for x in lines] == [
        (StatementKind.PAYMENT, "POS00001000001000007", 10_000, 38, None),
        (StatementKind.REFUND, "POS00001000001000007", -3_000, 0, "r-1"),
    ]  # the voided sale is flagged, not settled
    cut = b"\n".join(raw.splitlines()[:-1])
    with pytest.raises(Rejected) as refused:
        list(parse_settlement_file(cut))
    assert refused.value.code == "statement_malformed"


def test_acquirer_signature_vector() -> None:
    """The vector in docs/channels/pos.md ("Requests and signing"), computed with OpenSSL."""
    key = b"3f1c0a9e5b7d2c4e6a8b0d1f3e5c7a9b1d3f5e7c9a0b2d4f6e8a0c2e4b6d8f01"
    body = b'{"refund_id":"068c44cc-44ad-4c1a-9821-3c3ca3d19c6e"}'
    want = "8e76983e20da9c1c6449dc757a871b942738c3ddd28f00063a06383830ff647a"
    scheme = acquirer_scheme(key)
    message = scheme.canonical("refund_query", "paygate", "1765000000", "0123456789abcdef", body)
    assert hmac.new(key, message, hashlib.sha256).hexdigest() == want
    headers = httpx.Headers(
        {
            "X-Acq-Caller": "paygate",
            "X-Acq-Timestamp": "1765000000",
            "X-Acq-Nonce": "0123456789abcdef",
            "X-Acq-Signature": want,
        }
    )
    assert scheme.verify("refund_query", headers, body, now=1765000000)
    assert not scheme.verify("refund_query", headers, body + b" ", now=1765000000)
    assert not scheme.verify("refund_query", headers, body, now=1765000000 + 301)
    signed = httpx.Headers(scheme.headers("refund", body))
    assert scheme.verify("refund", signed, body)
    assert not scheme.verify("RESPONSE:refund", signed, body)


async def test_an_unreachable_acquirer_is_tried_again_when_the_lease_ends(
    pos: PosWorld, acquirer: Acquirer, second_terminal: SimTerminal
) -> None:
    dup = await duplicate_sale(pos, second_terminal)
    down = PosAdapter(
        acquirer_url=f"http://127.0.0.1:{free_port()}/acquirer", acquirer_secret=SECRET
    )
    registry = ChannelRegistry()
    registry.register(down)
    try:
        assert await execute_refunds(replace(acquirer.ctx, channels=registry)) == 1
    finally:
        await down.aclose()
    assert (await _refund_of(pos, dup)).status == "PROCESSING"  # nothing was sent
    assert await execute_refunds(acquirer.ctx) == 0  # leased meanwhile
    async with pos.res.sessions() as s:
        await s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.processed_at.is_(None))
            .values(available_at=datetime.now(UTC))
        )
        await s.commit()
    assert await execute_refunds(acquirer.ctx) == 1
    refund = await _refund_of(pos, dup)
    assert refund.status == "SUCCEEDED"
    assert _given_back(await acquirer.state()) == [(str(refund.id), dup.channel_trade_no, 10_000)]
