"""MIS-POS end to end: a simulated terminal calls our service over real HTTP.

Sale, its repeats, replays and forgeries; reversal before, after and concurrently with its
sale; void; refund; batch settlement balanced and mismatched; the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from channels.pos import transforms as t
from channels.pos.simulator import SimTerminal
from enotes.models import ENote
from enotes.service import run_issue_job
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.audit import Actor
from payments.confirm import ConfirmOutcome, confirm_payment
from payments.models import PaymentAttempt, Receipt, Refund
from payments.pos import terminals
from payments.pos.models import PosBatch
from payments.reversal import Undone, undo_payment
from settlement import reports
from tests.pos_support import MERCHANT, TERMINAL, UNPAID, PosWorld, pos, unpaid

__all__ = ["pos"]  # the fixture, used by name below


def code(sent: dict[str, object]) -> str:
    answer = sent["answer"]
    assert isinstance(answer, dict)
    return str(answer["code"])


async def test_a_bill_paid_at_a_counter_terminal(pos: PosWorld, settings: Settings) -> None:
    bill = await pos.bill(12_345)

    asked = await pos.sim.inquiry(bill.payment_code)
    assert asked.signature_ok
    assert asked.answer is not None
    assert asked.answer["code"] == "00"
    assert asked.answer["data"]["amount"] == "123.45"
    assert asked.answer["data"]["payer_name"] == "张*"

    out = await pos.sim.sale(bill.payment_code, 12_345)
    assert code(out["sale"]) == "00"
    assert out["sale"]["signature_ok"]
    state = await pos.state(bill.id)
    assert state["bill"] == "PAID"
    assert state["receipts"] == {"PAYMENT": 1}
    assert (state["clearing"], state["revenue"]) == (12_345, -12_345)
    assert state["ledger_ok"]
    while await run_issue_job(pos.res.sessions, enote_context(settings)):
        pass
    async with pos.res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        assert (receipt.channel, receipt.pay_mode) == ("pos", "POS")
        assert receipt.channel_trade_no == f"{TERMINAL}000001{out['trace_no']}"
        assert str(receipt.id) == out["sale"]["answer"]["data"]["receipt_id"]
        note = await s.scalar(select(ENote).where(ENote.receipt_id == receipt.id))
        assert note is not None
        assert json.loads(note.content)["main"]["pay_mode"] == "POS刷卡"
        day = receipt.business_date
        by_mode = await reports.totals(s, group_by="pay_mode", start=day, end=day)
        by_channel = await reports.totals(s, group_by="channel", start=day, end=day)
    assert {"key": "POS", "count": 1, "amount": 12_345, "refunded": 0} in by_mode
    assert {"key": "pos", "count": 1, "amount": 12_345, "refunded": 0} in by_channel


async def test_repeats_answer_as_the_first_and_pay_once(pos: PosWorld) -> None:
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount, duplicates=2)
    assert [code(x) for x in [out["sale"], *out["duplicates"]]] == ["00"] * 3
    receipt_ids = {x["answer"]["data"]["receipt_id"] for x in [out["sale"], *out["duplicates"]]}
    assert len(receipt_ids) == 1
    assert (await pos.state(bill.id))["receipts"] == {"PAYMENT": 1}


async def test_a_replayed_or_forged_message_is_refused_and_writes_nothing(pos: PosWorld) -> None:
    bill = await pos.bill()
    forged = await pos.sim.sale(bill.payment_code, bill.principal_amount, forge=True)
    assert code(forged["sale"]) == "A0"
    assert await pos.transactions() == 0
    assert (await pos.state(bill.id))["bill"] == "ISSUED"

    out = await pos.sim.sale(bill.payment_code, bill.principal_amount, replay=True)
    assert code(out["sale"]) == "00"
    assert code(out["replay"]) == "A0"  # the identical signed request: its nonce is spent
    assert await pos.transactions() == 1


async def test_unknown_or_disabled_terminal_is_refused_and_writes_nothing(
    pos: PosWorld,
) -> None:
    bill = await pos.bill()
    stranger = SimTerminal(
        gateway_url=pos.gateway_url, merchant=MERCHANT, terminal="POS09999", key=b"k" * 64
    )
    try:
        out = await stranger.sale(bill.payment_code, bill.principal_amount)
    finally:
        await stranger.aclose()
    assert code(out["sale"]) == "03"
    assert out["sale"]["signature_ok"] is False  # we hold no key to sign for a stranger

    async with pos.res.sessions() as s:
        await terminals.set_enabled(
            s, merchant_id=MERCHANT, terminal_id=TERMINAL, enabled=False, actor=Actor("a", "t")
        )
        await s.commit()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount)
    assert code(out["sale"]) == "03"
    assert out["sale"]["signature_ok"]
    rev = await pos.sim.reverse(out["trace_no"])
    assert code(rev.__dict__) == "03"
    assert await pos.transactions() == 0
    assert unpaid(await pos.state(bill.id)) == UNPAID


async def test_sale_refused_for_its_content_writes_nothing(pos: PosWorld) -> None:
    bill = await pos.bill(10_000)
    wrong = await pos.sim.sale(bill.payment_code, 9_999)
    assert code(wrong["sale"]) == "13"
    unknown = await pos.sim.sale("33010026" + "0" * 12, 10_000)
    assert code(unknown["sale"]) == "B1"
    other = await pos.terminal("898330170110002", "POS00002")
    try:
        async with pos.res.sessions() as s:
            from tests.payments_support import bill_for_test

            _, _, foreign = await bill_for_test(s, amount=10_000)  # another agency's bill
        out = await other.sale(foreign.payment_code, 10_000)
        assert code(out["sale"]) == "12"
    finally:
        await other.aclose()
    assert await pos.transactions() == 0

    paid = await pos.sim.sale(bill.payment_code, 10_000)
    assert code(paid["sale"]) == "00"
    again = await pos.sim.sale(bill.payment_code, 10_000)  # a new trace: the bill is paid
    assert code(again["sale"]) == "B2"
    assert (await pos.state(bill.id))["receipts"] == {"PAYMENT": 1}


# ------------------------------------------------------------------ reversal, three orders


async def test_reversal_after_its_sale_leaves_the_bill_as_if_never_paid(pos: PosWorld) -> None:
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount, lose_answer=True)
    assert out["sale"]["answer"] is None  # the terminal never heard the approval
    assert code(out["reversal"]) == "00"
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID
    assert "PAYMENT" not in state["receipts"]
    assert state["attempts"] == {"REVERSED": 1}

    # The bill can be paid again, and the reversal repeated changes nothing.
    again = await pos.sim.reverse(out["trace_no"])
    assert code(again.__dict__) == "00"
    paid = await pos.sim.sale(bill.payment_code, bill.principal_amount)
    assert code(paid["sale"]) == "00"
    state = await pos.state(bill.id)
    assert (state["bill"], state["receipts"].get("PAYMENT")) == ("PAID", 1)
    assert state["ledger_ok"]


async def test_reversal_before_its_sale_makes_the_sale_refused(pos: PosWorld) -> None:
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount, reversal_first=True)
    assert code(out["reversal"]) == "00"
    assert code(out["sale"]) == "B3"
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID
    assert state["receipts"] == {}
    assert state["attempts"] == {}


async def test_reversal_concurrent_with_its_sale(pos: PosWorld) -> None:
    for _ in range(6):
        bill = await pos.bill()
        out = await pos.sim.sale(bill.payment_code, bill.principal_amount, concurrent_reversal=True)
        assert code(out["reversal"]) == "00"
        assert code(out["sale"]) in {"00", "B3"}  # whichever took the key first
        state = await pos.state(bill.id)
        assert unpaid(state) == UNPAID, out
        assert "PAYMENT" not in state["receipts"]


async def test_reversal_while_the_sale_is_being_confirmed(pos: PosWorld) -> None:
    """The order the concurrent test may not hit: the sale's attempt is open, the reversal
    lands, then the sale's confirmation arrives — it must not pay the bill."""
    bill = await pos.bill()
    attempt_id = uuid.uuid4()
    async with pos.res.sessions() as s:
        s.add(
            PaymentAttempt(
                id=attempt_id,
                bill_id=bill.id,
                channel="pos",
                mode="DEBIT",
                status="PENDING",
                amount=bill.principal_amount,
                channel_trade_no="POS00001000001000042",
                expires_at=datetime.now(UTC) + timedelta(minutes=30),
            )
        )
        await s.commit()
    async with pos.res.engine.begin() as conn:
        undone = await undo_payment(conn, attempt_id=attempt_id, reason="test", actor="test")
    assert undone is not None
    assert undone.outcome == Undone.NOT_PAID
    result = await confirm_payment(
        pos.res.sessions,
        pos.res.redis,
        attempt_id=attempt_id,
        channel_trade_no="POS00001000001000042",
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
        bill_id=bill.id,
        channel="pos",
    )
    assert result.outcome == ConfirmOutcome.REJECTED_STATE
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID
    assert state["receipts"] == {}


# ------------------------------------------------------------------ void, refund, batches


async def test_void_the_same_batch_before_settlement(pos: PosWorld) -> None:
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount)
    assert code(out["sale"]) == "00"
    voided = await pos.sim.void(out["trace_no"])
    assert voided.answer is not None
    assert voided.answer["code"] == "00"
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID
    assert state["receipts"] == {"REVERSED": 1}
    # The identical void again answers as the first; a void of a voided sale is refused.
    body, headers = pos.sim.signed("void", voided.request)
    assert code((await pos.sim.post_signed("void", body, headers)).__dict__) == "00"
    assert code((await pos.sim.void(out["trace_no"])).__dict__) == "12"
    # Reversing a voided sale is refused too: the money went back by the void.
    assert code((await pos.sim.reverse(out["trace_no"])).__dict__) == "12"


async def test_no_void_after_batch_settlement_but_a_refund(pos: PosWorld) -> None:
    bill = await pos.bill(30_000)
    out = await pos.sim.sale(bill.payment_code, 30_000)
    batch = out["batch_no"]
    # Before settlement a refund is refused: void instead.
    early = await pos.sim.refund(batch, out["trace_no"], 10_000)
    assert early.answer is not None
    assert early.answer["code"] == "12"

    settled = await pos.sim.settle()
    assert settled.answer is not None
    assert settled.answer["code"] == "00"
    late = await pos.sim.send(
        "void",
        {
            "batch_no": batch,
            "trace_no": "000900",
            "original_trace_no": out["trace_no"],
            "amount": "300.00",
            "rrn": "000000000001",
            "time": t.format_time(datetime.now(UTC)),
            "operator": "01",
        },
    )
    assert code(late.__dict__) == "12"
    assert code((await pos.sim.reverse(out["trace_no"])).__dict__) == "12"

    refunded = await pos.sim.refund(batch, out["trace_no"], 10_000)
    assert refunded.answer is not None
    assert refunded.answer["code"] == "00"
    again = await pos.sim.post_signed("refund", *pos.sim.signed("refund", refunded.request))
    assert code(again.__dict__) == "00"
    state = await pos.state(bill.id)
    assert state["bill"] == "PARTIALLY_REFUNDED"
    assert state["ledger_ok"]
    assert (state["clearing"], state["revenue"]) == (20_000, -20_000)
    async with pos.res.sessions() as s:
        refund = await s.scalar(select(Refund))
        assert refund is not None
        assert (refund.status, refund.amount, refund.route) == ("SUCCEEDED", 10_000, "CHANNEL")


async def test_batch_settlement_balanced_then_mismatched(pos: PosWorld, res: Resources) -> None:
    bills = [await pos.bill(1_000 * (i + 1)) for i in range(4)]
    traces = []
    for b in bills[:3]:
        out = await pos.sim.sale(b.payment_code, b.principal_amount)
        assert code(out["sale"]) == "00"
        traces.append(out["trace_no"])
    reversed_ = await pos.sim.sale(
        bills[3].payment_code, bills[3].principal_amount, lose_answer=True
    )
    assert code(reversed_["reversal"]) == "00"
    assert code((await pos.sim.void(traces[0])).__dict__) == "00"

    balanced = await pos.sim.settle()
    assert balanced.answer is not None
    assert balanced.answer["code"] == "00", balanced.answer
    data = balanced.answer["data"]
    assert data["balanced"]
    assert data["host_totals"] == {
        "sale": {"count": 3, "amount": "60.00"},
        "void": {"count": 1, "amount": "10.00"},
        "refund": {"count": 0, "amount": "0.00"},
    }

    # The next batch: the terminal lost one of its two sales from its journal.
    b1, b2 = await pos.bill(700), await pos.bill(800)
    s1 = await pos.sim.sale(b1.payment_code, 700)
    s2 = await pos.sim.sale(b2.payment_code, 800)
    assert s1["batch_no"] == "000002"
    mismatch = await pos.sim.settle(skip_traces=(s2["trace_no"],))
    assert mismatch.answer is not None
    assert mismatch.answer["code"] == "95"
    data = mismatch.answer["data"]
    assert not data["balanced"]
    assert data["differences"] == [
        {
            "kind": "SALE",
            "trace_no": s2["trace_no"],
            "terminal_amount": None,
            "host_amount": "8.00",
        }
    ]
    assert data["terminal_totals"]["sale"] == {"count": 1, "amount": "7.00"}
    assert data["host_totals"]["sale"] == {"count": 2, "amount": "15.00"}
    # Reported: the batch is recorded as MISMATCHED with the differing transaction.
    async with res.sessions() as s:
        rows = (await s.scalars(select(PosBatch).where(PosBatch.status == "MISMATCHED"))).all()
    assert [(r.batch_no, r.differences) for r in rows] == [
        (
            "000002",
            [
                {
                    "kind": "SALE",
                    "trace_no": s2["trace_no"],
                    "terminal_amount": None,
                    "our_amount": 800,
                }
            ],
        )
    ]


# ------------------------------------------------------------------ protocol pieces


def test_signature_vector() -> None:
    """Fixed inputs → the MAC any implementation must produce (computed independently with
    `printf '%s' "$CANONICAL" | openssl dgst -sha256 -hmac "$KEY"`, see docs/channels/pos.md)."""
    body = b'{"payment_code":"33010026010000000018"}'
    canonical = t.canonical(
        "POST",
        "/v1/channels/pos/inquiry",
        "898330170110001",
        "POS00001",
        "1765000000",
        "0123456789abcdef",
        body,
    )
    assert canonical == (
        b"POST\n/v1/channels/pos/inquiry\n898330170110001\nPOS00001\n1765000000\n"
        b"0123456789abcdef\n" + hashlib.sha256(body).hexdigest().encode()
    )
    key = b"3f1c0a9e5b7d2c4e6a8b0d1f3e5c7a9b1d3f5e7c9a0b2d4f6e8a0c2e4b6d8f01"
    assert t.mac(key, canonical) == SIGNATURE_VECTOR


def test_every_outcome_has_a_terminal_code() -> None:
    from channels.base import Outcome

    assert set(t.CODES) == set(Outcome)
    assert set(t.CODES.values()) | {t.BATCH_MISMATCH} == set(t.MESSAGES)


SIGNATURE_VECTOR = "1647db6483e42c6ff113db18d5b1e7c13b0a8cd7cf12f8fa7eb30f0df9f21a7a"


@pytest.mark.parametrize(
    ("operation", "doc"),
    [
        ("sale", {"payment_code": "x"}),
        ("sale", {"amount": "1.001"}),
        ("settle", {"batch_no": "000001", "totals": [], "details": []}),
        ("reversal", {"batch_no": "1", "trace_no": "000001", "amount": "1.00"}),
    ],
)
async def test_malformed_messages_are_format_errors(
    pos: PosWorld, operation: str, doc: dict[str, object]
) -> None:
    sent = await pos.sim.send(operation, doc)
    assert code(sent.__dict__) == "30"
    assert await pos.transactions() == 0


async def test_registry_refuses_bad_ids_and_duplicates(pos: PosWorld) -> None:
    from kernel.errors import Conflict, InvalidInput

    async with pos.res.sessions() as s:
        with pytest.raises(InvalidInput):
            await terminals.register(
                s,
                merchant_id="12345",
                terminal_id="POS00003",
                agency_id=pos.agency.id,
                counter="x",
                actor=Actor("a", "t"),
            )
        with pytest.raises(Conflict):
            await terminals.register(
                s,
                merchant_id=MERCHANT,
                terminal_id=TERMINAL,
                agency_id=pos.agency.id,
                counter="x",
                actor=Actor("a", "t"),
            )
    async with pos.res.sessions() as s:
        listed = await terminals.list_terminals(s)
        assert [(v.merchant_id, v.terminal_id, v.enabled) for v in listed] == [
            (MERCHANT, TERMINAL, True)
        ]
        n = await s.scalar(select(func.count()).select_from(Receipt))
        assert n == 0


async def test_rotated_key_replaces_the_old_one(pos: PosWorld) -> None:
    bill = await pos.bill()
    async with pos.res.sessions() as s:
        made = await terminals.rotate_key(
            s, merchant_id=MERCHANT, terminal_id=TERMINAL, actor=Actor("a", "t")
        )
        await s.commit()
    old = await pos.sim.inquiry(bill.payment_code)
    assert code(old.__dict__) == "A0"
    pos.sim.key = made.key.encode()
    assert code((await pos.sim.inquiry(bill.payment_code)).__dict__) == "00"


async def test_concurrent_sales_of_many_bills(pos: PosWorld) -> None:
    """Several terminals' sales at once take the grouped path and each pays its own bill."""
    bills = [await pos.bill(500 + i) for i in range(8)]
    outs = await asyncio.gather(*(pos.sim.sale(b.payment_code, b.principal_amount) for b in bills))
    assert [code(o["sale"]) for o in outs] == ["00"] * 8
    for b in bills:
        assert (await pos.state(b.id))["bill"] == "PAID"


async def test_a_sale_left_open_is_closed_when_it_expires(pos: PosWorld) -> None:
    """The process stopped between recording a sale and paying the bill: the worker's
    recovery job closes the attempt at its expiry (the terminal reverses the sale anyway)."""
    from gateway.state import build_channels
    from payments.attempts import recover_attempts
    from payments.context import PaymentContext

    bill = await pos.bill()
    async with pos.res.sessions() as s:
        s.add(
            PaymentAttempt(
                id=uuid.uuid4(),
                bill_id=bill.id,
                channel="pos",
                mode="DEBIT",
                status="PENDING",
                amount=bill.principal_amount,
                channel_trade_no="POS00001000001000077",
                expires_at=datetime.now(UTC) - timedelta(seconds=1),
                next_check_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        )
        await s.commit()
    channels = build_channels(pos.res.settings)
    assert not getattr(channels.get("pos"), "payer_facing", True)
    ctx = PaymentContext(
        sessions=pos.res.sessions, redis=pos.res.redis, channels=channels, public_url=""
    )
    assert await recover_attempts(ctx) == 1
    assert (await pos.state(bill.id))["attempts"] == {"CLOSED": 1}
