"""The bank channel end to end: the simulated banks call our service over real HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select, update

from billing.models import Bill
from channels.bank import transforms as t
from channels.bank.adapter import BankAdapter
from channels.base import RefundRequest, StatementKind, TradeState, Unavailable
from gateway.state import Resources
from payments.attempts import create_attempt, recover_attempts
from payments.models import PaymentAttempt, Receipt, Refund
from payments.refunds import execute_refunds
from tests.payments_support import BankWorld, bill_for_test


async def _state(res: Resources, bill_id: uuid.UUID) -> tuple[str, int, int]:
    async with res.sessions() as s:
        bill = await s.get_one(Bill, bill_id)
        receipts = await s.scalar(select(func.count()).select_from(Receipt))
        refunds = await s.scalar(select(func.count()).select_from(Refund))
        return bill.status, int(receipts or 0), int(refunds or 0)


async def test_customer_pays_at_a_bank(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=12_345)

    out = await world.customer_pays("102", bill.payment_code, duplicates=2)

    assert out["query"]["code"] == "00000"
    assert out["query"]["signature_ok"]
    assert out["query"]["data"]["amount"] == "123.45"
    assert out["query"]["data"]["payer_name"] == "张*"
    # The original and two repeats: all answered as success, one receipt.
    assert [c["code"] for c in out["confirms"]] == ["00000"] * 3
    assert all(c["signature_ok"] for c in out["confirms"])
    assert {c["data"]["disposition"] for c in out["confirms"]} == {"PAID"}
    assert await _state(res, bill.id) == ("PAID", 1, 0)
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt))
        assert receipt is not None
        assert (receipt.channel, receipt.channel_trade_no, receipt.amount) == (
            "bank:102",
            out["bank_serial"],
            12_345,
        )


async def test_two_channels_both_confirmed_one_paid_one_refunded(
    res: Resources, world: BankWorld
) -> None:
    """Generic over the registered channels: pay through the first two, in turn."""
    first, second = world.channels.names()[:2]
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)

    payers = {name: name.removeprefix("bank:") for name in (first, second)}
    # Both banks answer the query before either confirms: the payer paid twice.
    a = await world.customer_pays(payers[first], bill.payment_code, drop_confirm=True)
    b = await world.customer_pays(payers[second], bill.payment_code)
    assert b["confirms"][0]["data"]["disposition"] == "PAID"
    # The first bank's confirmation arrives late, after the bill is PAID.
    late = await recover_attempts(world.ctx, now=datetime.now(UTC) + timedelta(minutes=10))
    assert late >= 1
    assert await _state(res, bill.id) == ("PAID", 2, 1)

    assert await execute_refunds(world.ctx) == 1
    async with res.sessions() as s:
        refund = await s.scalar(select(Refund))
        assert refund is not None
        assert refund.status == "SUCCEEDED"
        receipt = await s.get_one(Receipt, refund.receipt_id)
        assert (receipt.kind, receipt.channel, receipt.refunded_amount) == (
            "DUPLICATE",
            first,
            bill.principal_amount,
        )
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
    # The refund reached the bank that took the duplicate money, under our refund id.
    state = await world.bank_state(payers[first])
    # (The simulator lives for the whole session: look at this bill's orders only.)
    ours = {a["order_id"], b["order_id"]}
    assert [(r["refund_id"], r["order_id"]) for r in state["refunds"] if r["order_id"] in ours] == [
        (str(refund.id), a["order_id"])
    ]
    # Running the executor again sends nothing more.
    assert await execute_refunds(world.ctx) == 0


async def test_lost_confirmation_is_found_by_the_recovery_query(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await world.customer_pays("103", bill.payment_code, drop_confirm=True)
    assert out["confirms"] == []
    assert await _state(res, bill.id) == ("ISSUED", 0, 0)
    # Not yet due for a check: nothing happens.
    assert await recover_attempts(world.ctx) == 0

    await recover_attempts(world.ctx, now=datetime.now(UTC) + timedelta(minutes=4))

    assert await _state(res, bill.id) == ("PAID", 1, 0)
    async with res.sessions() as s:
        attempt = await s.get_one(PaymentAttempt, uuid.UUID(out["order_id"]))
        assert (attempt.status, attempt.channel_trade_no) == ("SUCCEEDED", out["bank_serial"])


async def test_unverifiable_messages_change_nothing(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)

    forged = await world.customer_pays("102", bill.payment_code, bad_signature=True)
    assert forged["confirms"][0]["code"] == t.ResultCode.BAD_SIGNATURE
    wrong_amount = await world.customer_pays("102", bill.payment_code, amount_delta=-1)
    assert wrong_amount["confirms"][0]["code"] == t.ResultCode.AMOUNT_DIFFERS
    # Bank 102 signing as bank 103 (wrong bank id): 103's secret does not verify it.
    wrong_bank = await world.customer_pays("102", bill.payment_code, as_bank="103")
    assert wrong_bank["confirms"][0]["code"] == t.ResultCode.BAD_SIGNATURE

    assert await _state(res, bill.id) == ("ISSUED", 0, 0)


async def test_unknown_order_and_bad_codes_change_nothing(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    adapter = world.channels.get("bank:102")
    assert isinstance(adapter, BankAdapter)
    secret = world.settings.payments.banks[0].secret

    async def post(op: str, payload: dict[str, object]) -> dict[str, object]:
        import json

        path = f"/v1/channels/bank/102/{op}"
        body = json.dumps(payload).encode()
        async with httpx.AsyncClient() as c:
            r = await c.post(
                world.gateway_url + path,
                content=body,
                headers=t.sign(secret, "POST", path, body, "102"),
            )
        assert r.status_code == 200
        t.verify(secret, "102", "RESPONSE", path, r.headers, r.content)  # we sign answers
        doc: dict[str, object] = r.json()
        return doc

    confirm = {
        "payment_code": bill.payment_code,
        "order_id": str(uuid.uuid4()),
        "bank_serial": "S-unknown-order",
        "amount": "200.00",
        "paid_at": t.format_time(datetime.now(UTC)),
    }
    assert (await post("confirm", confirm))["code"] == t.ResultCode.UNKNOWN_CODE
    typo = bill.payment_code[:-1] + str((int(bill.payment_code[-1]) + 1) % 10)
    assert (await post("query", {"payment_code": typo}))["code"] == t.ResultCode.CHECK_FAILED
    assert (await post("query", {"payment_code": "1" * 19}))["code"] == t.ResultCode.UNKNOWN_CODE
    assert await _state(res, bill.id) == ("ISSUED", 0, 0)

    # A replayed message (same nonce) is refused even with a valid signature.
    path = "/v1/channels/bank/102/query"
    body = b'{"payment_code":"%s"}' % bill.payment_code.encode()
    headers = t.sign(secret, "POST", path, body, "102")
    async with httpx.AsyncClient() as c:
        first = (await c.post(world.gateway_url + path, content=body, headers=headers)).json()
        replay = (await c.post(world.gateway_url + path, content=body, headers=headers)).json()
    assert first["code"] == "00000"
    assert replay["code"] == t.ResultCode.BAD_SIGNATURE


async def test_cancelled_bill_query_refused_but_a_confirmation_is_refunded(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
        await s.execute(update(Bill).where(Bill.id == bill.id).values(status="CANCELLED"))
        await s.commit()
    refused = await world.customer_pays("103", bill.payment_code)
    assert refused["query"]["code"] == t.ResultCode.CANCELLED
    assert "confirms" not in refused

    # A bank that confirms without asking (12005 is accepted): the money is real.
    out = await world.customer_pays(
        "103", bill.payment_code, skip_query=True, amount=bill.principal_amount
    )
    assert out["confirms"][0]["code"] == "00000"
    assert out["confirms"][0]["data"]["disposition"] == "REFUND"
    assert await _state(res, bill.id) == ("CANCELLED", 1, 1)
    assert await execute_refunds(world.ctx) == 1
    state = await world.bank_state("103")
    assert [r["amount"] for r in state["refunds"]] == [bill.principal_amount]


async def test_generic_notify_for_the_bank_schedules_a_query(
    res: Resources, world: BankWorld
) -> None:
    """The bank's headers carry its signature, so a bare body on the generic endpoint is
    unverifiable: nothing changes, but the named order is queried at once."""
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await world.customer_pays("102", bill.payment_code, drop_confirm=True)
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{world.gateway_url}/v1/channels/bank:102/notify",
            json={"order_id": out["order_id"], "state": "SUCCESS", "amount": "200.00"},
        )
    assert r.status_code == 400
    assert await _state(res, bill.id) == ("ISSUED", 0, 0)
    # Due now: the recovery job queries the bank and confirms what it says.
    assert await recover_attempts(world.ctx) == 1
    assert await _state(res, bill.id) == ("PAID", 1, 0)


async def test_citizen_bank_attempt_expires_and_closes(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    view = await create_attempt(
        world.ctx, payment_code=bill.payment_code, channel="bank:103", mode="code"
    )
    assert view.status == "PENDING"
    assert "payment code" in view.client_payload["instructions"]

    await recover_attempts(world.ctx, now=datetime.now(UTC) + timedelta(hours=1))

    async with res.sessions() as s:
        assert (await s.get_one(PaymentAttempt, view.id)).status == "CLOSED"


async def test_expired_attempt_the_bank_was_paid_for_is_confirmed_not_closed(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await world.customer_pays("102", bill.payment_code, drop_confirm=True)

    await recover_attempts(world.ctx, now=datetime.now(UTC) + timedelta(hours=2))

    assert await _state(res, bill.id) == ("PAID", 1, 0)
    async with res.sessions() as s:
        attempt = await s.get_one(PaymentAttempt, uuid.UUID(out["order_id"]))
        assert attempt.status == "SUCCEEDED"


async def test_adapter_query_refund_statement_and_unavailable(world: BankWorld) -> None:
    adapter = world.channels.get("bank:102")
    missing = await adapter.query_payment(str(uuid.uuid4()))
    assert missing.state == TradeState.NOT_FOUND
    raw = await adapter.fetch_statement(datetime.now(UTC).date())
    assert raw.startswith(b"bank_serial,order_id,kind")
    assert all(line.kind in set(StatementKind) for line in adapter.parse_statement(raw))

    dead = BankAdapter(bank_code="102", secret=b"x", base_url="http://127.0.0.1:1/banks/102")
    try:
        req = RefundRequest(refund_id="r", attempt_id="a", amount=1, reason="test")
        try:
            await dead.refund(req)
        except Unavailable:
            pass
        else:
            raise AssertionError("a refused connection is Unavailable (nothing was sent)")
    finally:
        await dead.aclose()


def test_banks_are_read_from_the_environment_format() -> None:
    import pytest

    from gateway.settings import _parse_banks

    banks = _parse_banks("102=s1@http://a:1/banks/102/, 103=s2@http://b:2/banks/103")
    assert [(b.code, b.secret, b.base_url) for b in banks] == [
        ("102", b"s1", "http://a:1/banks/102"),
        ("103", b"s2", "http://b:2/banks/103"),
    ]
    with pytest.raises(ValueError, match="PAYGATE_BANKS"):
        _parse_banks("icbc=s@http://x")
