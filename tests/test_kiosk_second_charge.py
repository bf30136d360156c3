"""A kiosk that charges a card twice under one order id: the second charge is a payment of
its own (by its acquirer reference) — a DUPLICATE receipt refunded through the acquirer —
never refused and lost; its repeats answer the same and write nothing; a message that
really conflicts (same reference, other payment code or amount) is still refused.

The kiosk and its acquirer are the simulator over real HTTP; our service on a real port.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
from sqlalchemy import func, select, text

from billing.models import Bill
from channels.kiosk import transforms as t
from channels.money import fen_to_yuan
from gateway.state import Resources
from payments.models import PaymentAttempt, Receipt, Refund
from payments.refunds import execute_refunds
from tests.kiosk_support import KioskWorld
from tests.payments_support import bill_for_test

OK, CONFLICT = t.ResultCode.OK, t.ResultCode.CONFLICT
_TABLES = (
    "kiosk_confirmations",
    "receipts",
    "payment_attempts",
    "refunds",
    "journal_entries",
    "outbox",
)


async def _counts(res: Resources) -> dict[str, int]:
    async with res.engine.connect() as conn:
        return {
            name: int((await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one())
            for name in _TABLES
        }


async def _confirm(
    world: KioskWorld, device_id: str, secret: str | None, body: dict[str, Any]
) -> Any:
    """A confirmation sent as the device would, freshly signed (a new nonce)."""
    assert secret is not None  # an HMAC device
    raw = json.dumps(body).encode()
    headers = t.request_headers("confirm", device_id, raw, secret=secret.encode())
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"{world.gateway_url}/v1/channels/kiosk/confirm", content=raw, headers=headers
        )
    assert r.status_code == 200
    return r.json()


async def test_a_second_charge_under_a_paid_order_is_recorded_and_refunded(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = f"K-{secrets.token_hex(4)}"
    issued = await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)

    out = await kiosk_world.pay(dev, bill.payment_code, charge_twice=True)
    [first] = out["confirms"]
    assert (first["code"], first["data"]["disposition"]) == (OK, "PAID")
    again = out["again"]
    assert again["order_id"] == out["order_id"]  # the same order id, charged again
    assert again["acquirer_ref"] != out["acquirer_ref"]
    second, repeat = again["confirms"]  # the second charge, then the kiosk's repeat of it
    assert second["signature_ok"]
    assert (second["code"], second["data"]["disposition"]) == (OK, "REFUND")
    assert repeat["code"] == OK
    assert repeat["data"] == second["data"]
    # Answered under our id for this payment (its own attempt), not the order it reused.
    assert second["data"]["order_id"] not in (None, out["order_id"])

    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
        receipts = {
            r.kind: r
            for r in (await s.scalars(select(Receipt).where(Receipt.bill_id == bill.id))).all()
        }
        assert set(receipts) == {"PAYMENT", "DUPLICATE"}
        duplicate = receipts["DUPLICATE"]
        assert str(duplicate.id) == second["data"]["receipt_id"]
        assert duplicate.channel_trade_no == again["acquirer_ref"]
        assert receipts["PAYMENT"].channel_trade_no == out["acquirer_ref"]
        assert duplicate.amount == receipts["PAYMENT"].amount
        # The order's own attempt still holds the first charge; the second has its own.
        order = await s.get_one(PaymentAttempt, out["order_id"])
        assert (order.status, order.channel_trade_no) == ("SUCCEEDED", out["acquirer_ref"])
        own = await s.get_one(PaymentAttempt, second["data"]["order_id"])
        assert (own.id, own.channel_trade_no) == (duplicate.attempt_id, again["acquirer_ref"])

    # Sent once more later, freshly signed: the same answer, nothing written.
    before = await _counts(res)
    later = await _confirm(kiosk_world, dev, issued.secret, again["sent"])
    assert later["code"] == OK
    assert later["data"]["receipt_id"] == second["data"]["receipt_id"]
    assert later["data"]["disposition"] == "REFUND"
    assert await _counts(res) == before

    # Really conflicting: the second charge's reference with another amount or another
    # payment code (under a fresh sequence number) is refused and writes nothing.
    async with res.sessions() as s:
        _, _, other = await bill_for_test(s)
    seq = again["seq"] + 1
    for changed in (
        {"amount": fen_to_yuan(duplicate.amount + 100)},
        {"payment_code": other.payment_code, "order_id": None},
    ):
        refused = await _confirm(
            kiosk_world, dev, issued.secret, again["sent"] | changed | {"seq": seq}
        )
        seq += 1
        assert refused["code"] == CONFLICT, refused
        after = await _counts(res)
        # Only the device's sequence number is recorded (it is no gap).
        assert after | {"kiosk_confirmations": 0} == before | {"kiosk_confirmations": 0}

    # The duplicate's refund goes back through the acquirer, to the second charge.
    assert await execute_refunds(kiosk_world.ctx) == 1
    async with res.sessions() as s:
        refund = await s.scalar(select(Refund).where(Refund.receipt_id == duplicate.id))
        assert refund is not None
        assert (refund.status, refund.amount) == ("SUCCEEDED", duplicate.amount)
        assert await s.scalar(select(func.count()).select_from(Refund)) == 1
    acquirer = await kiosk_world.acquirer()
    assert [
        (r["reference"], r["amount"])
        for r in acquirer["refunds"]
        if r["refund_id"] == str(refund.id)
    ] == [(again["acquirer_ref"], duplicate.amount)]
    assert await execute_refunds(kiosk_world.ctx) == 0
