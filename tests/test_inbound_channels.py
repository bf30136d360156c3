"""The seam for channels that call us: the generic route, the bank's parse into fen, the
channel-agnostic service (upload of stored confirmations), and refusals that change nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from billing.models import Bill
from channels.bank import transforms as t
from channels.bank.inbound import RESULT_CODES, BankInbound, encode
from channels.bank.registry import BankEntry
from channels.bank.signing import HmacSigning
from channels.base import (
    BadMessage,
    BillQuery,
    ConfirmPayment,
    Disposition,
    InboundAnswer,
    InboundCall,
    InboundChannel,
    InboundRequest,
    InvalidNotification,
    Outcome,
    PayMode,
    ReverseConfirmation,
    UnknownSender,
    UploadConfirmations,
)
from gateway.state import Resources
from kernel.models import OutboxMessage
from ledger.models import JournalLine
from payments import inbound
from payments.models import PaymentAttempt, Receipt, Refund
from tests.payments_support import BankWorld, bank_secret, bill_for_test, valid_code

CHANNEL = "bank:102"
PATH = "/v1/channels/bank/102/confirm"


async def _count(res: Resources, model: type) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _nothing_written(res: Resources) -> bool:
    counts = [await _count(res, m) for m in (PaymentAttempt, Receipt, Refund, OutboxMessage)]
    return counts == [0, 0, 0, 0]


async def _post(world: BankWorld, path: str, payload: Any, *, secret: bytes | None = None) -> Any:
    body = json.dumps(payload).encode()
    headers = t.sign(secret or bank_secret("102"), "POST", path, body, "102")
    async with httpx.AsyncClient() as c:
        return await c.post(world.gateway_url + path, content=body, headers=headers)


def _confirm_doc(code: str, serial: str, amount: str, order_id: str | None = None) -> Any:
    return {
        "payment_code": code,
        "order_id": order_id,
        "bank_serial": serial,
        "amount": amount,
        "paid_at": t.format_time(datetime.now(UTC)),
        "pay_mode": "counter",
    }


# ------------------------------------------------------------------ the generic route


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/channels/carrier-pigeon/confirm", "unknown_channel"),
        ("/v1/channels/bank/102/refund", "unknown_operation"),
        ("/v1/channels/bank:102/settle", "unknown_operation"),
    ],
)
async def test_unknown_channel_or_operation_is_a_problem_404_and_writes_nothing(
    res: Resources, world: BankWorld, path: str, code: str
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)

    r = await _post(world, path, _confirm_doc(bill.payment_code, "S-404", "200.00"))

    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code
    assert await _nothing_written(res)


@pytest.mark.parametrize("path", ["/v1/channels/bank/999/confirm", "/v1/channels/bank:999/query"])
async def test_an_unknown_bank_is_refused_in_the_banks_code_and_writes_nothing(
    res: Resources, world: BankWorld, path: str
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)

    r = await _post(world, path, _confirm_doc(bill.payment_code, "S-404", "200.00"))

    assert r.status_code == 200
    assert r.json()["code"] == t.ResultCode.UNKNOWN_BANK
    assert "x-bank-signature" not in r.headers  # no key to sign with
    assert await _nothing_written(res)


async def test_the_channel_name_form_of_the_route_reaches_the_same_bank(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=4_321)
    path = "/v1/channels/bank:102/query"

    r = await _post(world, path, {"payment_code": bill.payment_code})

    assert r.status_code == 200
    t.verify(bank_secret("102"), "102", "RESPONSE", path, r.headers, r.content)
    assert r.json()["code"] == t.ResultCode.OK
    assert r.json()["data"]["amount"] == "43.21"


async def test_forged_confirmation_on_the_generic_route_changes_nothing(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    doc = _confirm_doc(bill.payment_code, "S-forged", "200.00")

    forged = await _post(world, PATH, doc, secret=b"not-the-bank-secret")
    other_bank = await _post(world, "/v1/channels/bank/103/confirm", doc)  # 102 signing as 103

    for r, path, code in (
        (forged, PATH, "102"),
        (other_bank, "/v1/channels/bank/103/confirm", "103"),
    ):
        assert r.status_code == 200
        assert r.json() == {"code": "19001", "msg": "signature check failed", "data": None}
        # Refused in the bank's own terms, and signed, so the bank can trust the refusal.
        t.verify(bank_secret(code), code, "RESPONSE", path, r.headers, r.content)
    assert await _nothing_written(res)
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"


async def test_a_verified_body_that_is_not_an_object_is_a_bad_request(
    res: Resources, world: BankWorld
) -> None:
    r = await _post(world, PATH, ["not", "an", "object"])
    assert r.json()["code"] == t.ResultCode.BAD_REQUEST
    r = await _post(world, PATH, {"payment_code": "1", "amount": "1.005"})
    assert r.json()["code"] == t.ResultCode.BAD_REQUEST
    assert await _nothing_written(res)


# ------------------------------------------------------------------ the bank's parse


class _Banks:
    """Bank 102 with the secret `s3cret`, as the directory would give it."""

    async def get(self, code: str) -> BankEntry | None:
        if code != "102":
            return None
        return BankEntry("102", "bank 102", "http://bank.invalid", True, HmacSigning(b"s3cret"))


BANK = BankInbound(_Banks())


def _call(operation: str, payload: Any, *, secret: bytes = b"s3cret") -> InboundCall:
    path = f"/v1/channels/bank/102/{operation}"
    body = json.dumps(payload).encode()
    headers = {k.lower(): v for k, v in t.sign(secret, "POST", path, body, "102").items()}
    return InboundCall(operation, "102", path, headers, body)


async def test_the_bank_parses_a_confirmation_into_fen_and_aware_times() -> None:
    order = str(uuid.uuid4())
    msg = await BANK.parse(
        _call(
            "confirm",
            {
                "payment_code": "33010026010000000017",
                "order_id": order,
                "bank_serial": "102SERIAL",
                "amount": "123.4",
                "paid_at": "2026-12-06 10:30:00",
            },
        )
    )
    assert msg.channel == CHANNEL
    assert msg.nonce is not None
    assert msg.request == ConfirmPayment(
        payment_code="33010026010000000017",
        reference="102SERIAL",
        amount=12_340,
        paid_at=datetime(2026, 12, 6, 2, 30, tzinfo=UTC),
        order_id=order,
        pay_mode=PayMode.BANK,
    )
    query = await BANK.parse(_call("query", {"payment_code": "33010026010000000017"}))
    assert query.request == BillQuery("33010026010000000017")


@pytest.mark.parametrize(
    "change",
    [
        {"amount": "1.005"},
        {"amount": "1e2"},
        {"amount": "0.00"},
        {"amount": "-1.00"},
        {"paid_at": "2026-12-06T10:30:00"},
        {"order_id": "not-a-uuid"},
        {"bank_serial": ""},
        {"bank_serial": "x" * 65},
    ],
)
async def test_malformed_confirmations_are_bad_messages(change: dict[str, str]) -> None:
    good = {
        "payment_code": "33010026010000000017",
        "bank_serial": "102SERIAL",
        "amount": "1.00",
        "paid_at": "2026-12-06 10:30:00",
    }
    with pytest.raises(BadMessage):
        await BANK.parse(_call("confirm", good | change))


async def test_the_bank_refuses_to_parse_what_it_cannot_verify() -> None:
    call = _call("query", {"payment_code": "1"}, secret=b"other")
    with pytest.raises(InvalidNotification):
        await BANK.parse(call)
    stale = _call("query", {"payment_code": "1"})
    with pytest.raises(InvalidNotification):
        await BANK.parse_at(stale, datetime.now(UTC).timestamp() + 301)
    unknown = replace(_call("query", {"payment_code": "1"}), member="103")
    with pytest.raises(UnknownSender):
        await BANK.parse(unknown)
    assert await BANK.has_member("102")
    assert not await BANK.has_member("103")


def test_every_outcome_has_a_bank_code_and_amounts_leave_as_yuan() -> None:
    assert set(RESULT_CODES) == set(Outcome)
    assert encode(InboundAnswer(Outcome.FORGED, "x")).code == "19001"
    assert isinstance(BANK, InboundChannel)
    assert encode(InboundAnswer(Outcome.BAD_PARAMETER, "x")).code == "10002"


# ------------------------------------------------------------------ the service


def _confirmation(code: str, reference: str, amount: int, sequence: int) -> ConfirmPayment:
    return ConfirmPayment(
        payment_code=code,
        reference=reference,
        amount=amount,
        paid_at=datetime.now(UTC) - timedelta(minutes=sequence),
        pay_mode=PayMode.KIOSK,
        sequence=sequence,
    )


async def test_an_upload_applies_each_stored_confirmation_once(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, first = await bill_for_test(s, amount=1_000)
        _, _, second = await bill_for_test(s, amount=2_000)
    one = _confirmation(first.payment_code, "DEV1-000001", 1_000, 1)
    two = _confirmation(second.payment_code, "DEV1-000002", 2_000, 2)
    # The same bill paid twice while offline: real money, refunded.
    three = _confirmation(first.payment_code, "DEV1-000003", 1_000, 3)
    ctx = res.payment_context()

    # Out of order and with a repeat inside the batch.
    answer = await inbound.handle(ctx, CHANNEL, UploadConfirmations((two, one, three, two)))
    again = await inbound.handle(ctx, CHANNEL, UploadConfirmations((one, two, three)))

    assert answer.outcome == Outcome.OK
    got = [
        (a.outcome, a.receipt.disposition, a.receipt.sequence) for a in answer.items if a.receipt
    ]
    assert got == [
        (Outcome.OK, Disposition.PAID, 2),
        (Outcome.OK, Disposition.PAID, 1),
        (Outcome.OK, Disposition.REFUND, 3),
        (Outcome.OK, Disposition.PAID, 2),
    ]
    assert answer.items[0].receipt == answer.items[3].receipt
    assert [a.receipt for a in again.items] == [answer.items[i].receipt for i in (1, 0, 2)]
    assert await _count(res, Receipt) == 3
    assert await _count(res, Refund) == 1
    assert await _count(res, PaymentAttempt) == 3


async def test_an_empty_upload_and_an_unknown_request_are_bad_requests(res: Resources) -> None:
    class Unheard(InboundRequest):
        __slots__ = ()

    ctx = res.payment_context()
    assert (await inbound.handle(ctx, CHANNEL, UploadConfirmations(()))).outcome == (
        Outcome.BAD_REQUEST
    )
    assert (await inbound.handle(ctx, CHANNEL, Unheard())).outcome == Outcome.BAD_REQUEST
    assert await _nothing_written(res)


async def test_one_serial_confirmed_for_two_orders_at_once_pays_one(
    res: Resources, world: BankWorld
) -> None:
    """The order path checks by a read and confirms by the grouped statement; a reference
    recorded meanwhile on the other order is still caught (the unique index) and answered
    as a conflicting repeat."""
    ctx = world.ctx
    orders = []
    for amount in (3_000, 3_000):
        async with res.sessions() as s:
            _, _, bill = await bill_for_test(s, amount=amount)
        q = await inbound.handle(ctx, CHANNEL, BillQuery(bill.payment_code))
        assert q.bill is not None
        orders.append((bill, q.bill.order_id))
    now = datetime.now(UTC)

    answers = await asyncio.gather(
        *[
            inbound.handle(
                ctx,
                CHANNEL,
                ConfirmPayment(bill.payment_code, "102-SAME-SERIAL", 3_000, now, order_id=order),
            )
            for bill, order in orders
        ]
    )

    assert sorted(a.outcome for a in answers) == [Outcome.DUPLICATE, Outcome.OK]
    assert await _count(res, Receipt) == 1


async def test_a_confirmation_of_another_channels_order_is_unknown(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=3_000)
    q = await inbound.handle(world.ctx, "bank:103", BillQuery(bill.payment_code))
    assert q.bill is not None
    confirm = ConfirmPayment(
        bill.payment_code, "102-X", 3_000, datetime.now(UTC), order_id=q.bill.order_id
    )

    answer = await inbound.handle(world.ctx, CHANNEL, confirm)

    assert answer.outcome == Outcome.UNKNOWN_ORDER
    assert await _count(res, Receipt) == 0


# ------------------------------------------------------------------ reversal


async def _bill_state(res: Resources, bill_id: uuid.UUID) -> tuple[str, list[str], int]:
    """(bill status, receipt kinds, the sum of every ledger line — always 0)."""
    async with res.sessions() as s:
        status = (await s.get_one(Bill, bill_id)).status
        kinds = sorted(
            (await s.scalars(select(Receipt.kind).where(Receipt.bill_id == bill_id))).all()
        )
        total = await s.scalar(select(func.coalesce(func.sum(JournalLine.amount), 0)))
    return status, kinds, int(total or 0)


async def test_a_reversal_the_same_day_takes_the_payment_back_once(res: Resources) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=2_500)
    ctx = res.payment_context()
    paid = await inbound.handle(ctx, CHANNEL, _confirmation(bill.payment_code, "R-1", 2_500, 0))
    assert paid.receipt is not None
    assert paid.receipt.disposition == Disposition.PAID

    undo = ReverseConfirmation(bill.payment_code, "R-1", 2_500, "teller's transaction failed")
    first = await inbound.handle(ctx, CHANNEL, undo)
    again = await inbound.handle(ctx, CHANNEL, undo)

    assert (first.outcome, again.outcome) == (Outcome.OK, Outcome.OK)
    assert await _bill_state(res, bill.id) == ("ISSUED", ["REVERSED"], 0)
    # The bill can be paid again, by another payment.
    other = await inbound.handle(ctx, CHANNEL, _confirmation(bill.payment_code, "R-2", 2_500, 0))
    assert other.receipt is not None
    assert other.receipt.disposition == Disposition.PAID


async def test_a_reversal_racing_its_confirmation_is_sent_again_until_it_takes(
    res: Resources,
) -> None:
    """A reversal that finds no confirmation (yet) changes nothing; the channel sends it
    again, and once the confirmation is recorded it takes it back."""
    ctx = res.payment_context()
    for i in range(5):
        async with res.sessions() as s:
            _, _, bill = await bill_for_test(s, amount=1_000 + i)
        ref = f"R-RACE-{i}"
        undo = ReverseConfirmation(bill.payment_code, ref, 1_000 + i)
        _, first = await asyncio.gather(
            inbound.handle(ctx, CHANNEL, _confirmation(bill.payment_code, ref, 1_000 + i, 0)),
            inbound.handle(ctx, CHANNEL, undo),
        )
        assert first.outcome in (Outcome.OK, Outcome.NOT_CONFIRMED)
        assert (await inbound.handle(ctx, CHANNEL, undo)).outcome == Outcome.OK
        assert await _bill_state(res, bill.id) == ("ISSUED", ["REVERSED"], 0)


async def test_a_reversal_that_names_another_payment_or_day_changes_nothing(
    res: Resources,
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=2_500)
    ctx = res.payment_context()
    await inbound.handle(ctx, CHANNEL, _confirmation(bill.payment_code, "R-X", 2_500, 0))

    wrong = await inbound.handle(ctx, CHANNEL, ReverseConfirmation(bill.payment_code, "R-X", 2_499))
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    late = await inbound.handle(
        ctx, CHANNEL, ReverseConfirmation(bill.payment_code, "R-X", 2_500), now=tomorrow
    )
    unknown = await inbound.handle(ctx, CHANNEL, ReverseConfirmation(valid_code(), "R-X", 2_500))
    never = await inbound.handle(ctx, CHANNEL, ReverseConfirmation(bill.payment_code, "R-Y", 2_500))

    assert wrong.outcome == Outcome.AMOUNT_DIFFERS
    assert late.outcome == Outcome.TOO_LATE
    assert (unknown.outcome, never.outcome) == (Outcome.NOT_CONFIRMED, Outcome.NOT_CONFIRMED)
    assert (await _bill_state(res, bill.id))[:2] == ("PAID", ["PAYMENT"])
