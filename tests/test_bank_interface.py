"""The rest of the bank interface over real HTTP, through the simulated banks: SM2-signed
banks, disabled banks, reversal (冲正), the day-end account check (日终对账), version and
parameter errors, lost answers. Each result code it names is produced here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from billing.models import Bill
from channels.bank import transforms as t
from channels.bank.signing import Sm2Signing
from channels.bank.simulator import Bank
from channels.bank.simulator import create_app as create_simulator
from channels.base import PayMode, TradeState
from channels.money import fen_to_yuan
from gateway.state import Resources
from kernel.clock import business_date
from kernel.models import OutboxMessage
from kernel.sm2 import PrivateKey, PublicKey
from kernel.staff import create_staff
from payments.models import DayCheck, PaymentAttempt, Receipt, Refund
from tests.payments_support import BankWorld, bank_secret, bill_for_test
from tests.servers import ServerThread

R = t.ResultCode
SM2_BANK_KEY = PrivateKey("3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8")


async def _count(res: Resources, model: type, *where: Any) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _nothing_written(res: Resources) -> bool:
    counts = [await _count(res, m) for m in (PaymentAttempt, Receipt, Refund, OutboxMessage)]
    return counts == [0, 0, 0, 0]


async def _control(url: str, code: str, op: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(f"{url}/control/{code}/{op}", json=body)
        r.raise_for_status()
        return r.json()


async def _post(world: BankWorld, op: str, payload: Any) -> Any:
    path = f"/v1/channels/bank/102/{op}"
    body = json.dumps(payload).encode()
    async with httpx.AsyncClient() as c:
        r = await c.post(
            world.gateway_url + path,
            content=body,
            headers=t.sign(bank_secret("102"), "POST", path, body, "102"),
        )
    t.verify(bank_secret("102"), "102", "RESPONSE", path, r.headers, r.content)
    return r.json()


async def _finance(res: Resources) -> dict[str, str]:
    async with res.sessions() as s:
        _, token = await create_staff(s, name="wang", role="finance")
        await s.commit()
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ SM2 banks, disabled banks


@pytest.fixture
def sm2_bank() -> Iterator[tuple[str, dict[str, Any]]]:
    """A simulated bank 105 signing with SM2; it learns our public key once registered."""
    app = create_simulator({})
    with ServerThread(app) as server:
        yield server.url, {"app": app}


async def test_an_sm2_bank_registered_through_the_api_pays_and_is_refused_once_disabled(
    res: Resources, world: BankWorld, sm2_bank: tuple[str, dict[str, Any]]
) -> None:
    sim_url, holder = sm2_bank
    auth = await _finance(res)
    async with httpx.AsyncClient(base_url=world.gateway_url) as c:
        r = await c.post(
            "/v1/banks",
            headers=auth,
            json={
                "code": "105",
                "name": "SM2 Bank",
                "sign_method": "SM2-SM3",
                "endpoint": f"{sim_url}/banks/105",
                "bank_public_key": SM2_BANK_KEY.public.hex,
            },
        )
    assert r.status_code == 201, r.text
    ours = PublicKey(r.json()["our_public_key"])
    # The bank keeps its own key and our public key: it verifies every answer with it.
    holder["app"].banks["105"] = Bank("105", Sm2Signing(own=SM2_BANK_KEY, peer=ours))

    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=6_600)
    out = await _control(
        sim_url,
        "105",
        "pay",
        {"payment_code": bill.payment_code, "gateway_url": world.gateway_url, "pay_mode": "ecny"},
    )
    assert out["query"]["signature_ok"]
    assert [(c["code"], c["signature_ok"]) for c in out["confirms"]] == [(R.OK, True)]
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        assert (receipt.channel, receipt.pay_mode) == ("bank:105", PayMode.ECNY)

    # Our own calls to the registered bank (the worker's queries and refunds) sign with SM2
    # too: its adapter is made from the registration when the directory refreshes.
    await res.banks.refresh()
    adapter = res.channels.get("bank:105")
    status = await adapter.query_payment(out["order_id"])
    assert (status.state, status.amount, status.pay_mode) == (
        TradeState.SUCCEEDED,
        6_600,
        PayMode.ECNY,
    )

    # A message signed with another key is forged (19001); nothing is written.
    async with res.sessions() as s:
        _, _, other = await bill_for_test(s, amount=1_000)
    forged = await _control(
        sim_url,
        "105",
        "pay",
        {"payment_code": other.payment_code, "gateway_url": world.gateway_url,
         "skip_query": True, "amount": 1_000, "bad_signature": True},
    )  # fmt: skip
    assert [c["code"] for c in forged["confirms"]] == [R.BAD_SIGNATURE]
    assert await _count(res, Receipt, Receipt.bill_id == other.id) == 0

    # Disabled: refused in the bank's code (19004), unsigned, and nothing is written.
    async with httpx.AsyncClient(base_url=world.gateway_url) as c:
        assert (await c.post("/v1/banks/105/disable", headers=auth)).status_code == 200
    refused = await _control(
        sim_url,
        "105",
        "pay",
        {"payment_code": other.payment_code, "gateway_url": world.gateway_url,
         "skip_query": True, "amount": 1_000},
    )  # fmt: skip
    assert [(c["code"], c["signature_ok"]) for c in refused["confirms"]] == [
        (R.UNKNOWN_BANK, False)
    ]
    assert await _count(res, PaymentAttempt, PaymentAttempt.bill_id == other.id) == 0


# ------------------------------------------------------------------ reversal (冲正)


async def test_reversal_over_the_wire_and_its_refusals(res: Resources, world: BankWorld) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=3_300)
    paid = await world.customer_pays("102", bill.payment_code, pay_mode="counter")
    serial = paid["bank_serial"]
    sim = world.simulator_url
    gw = world.gateway_url

    wrong = await _control(sim, "102", "reverse", {"gateway_url": gw, "bank_serial": serial,
                                                   "amount_delta": 1})  # fmt: skip
    assert wrong["code"] == R.AMOUNT_DIFFERS
    done = await _control(sim, "102", "reverse", {"gateway_url": gw, "bank_serial": serial})
    assert (done["code"], done["signature_ok"]) == (R.OK, True)
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill.id))
        assert receipt is not None
        assert receipt.kind == "REVERSED"
    state = await world.bank_state("102")
    assert {o["bank_serial"]: o["state"] for o in state["orders"]}[serial] == "REVERSED"

    unknown = await _post(
        world,
        "reverse",
        {"payment_code": bill.payment_code, "bank_serial": "NEVER-SENT", "amount": "33.00"},
    )
    assert unknown["code"] == R.NOT_CONFIRMED

    # A confirmation of an earlier business day can no longer be reversed (12007).
    async with res.sessions() as s:
        _, _, old = await bill_for_test(s, amount=2_200)
    yesterday = t.format_time(datetime.now(UTC) - timedelta(days=1))
    confirm = {"payment_code": old.payment_code, "bank_serial": "OLD-1", "amount": "22.00",
               "paid_at": yesterday, "pay_mode": "web"}  # fmt: skip
    assert (await _post(world, "confirm", confirm))["code"] == R.OK
    late = await _post(
        world,
        "reverse",
        {"payment_code": old.payment_code, "bank_serial": "OLD-1", "amount": "22.00"},
    )
    assert late["code"] == R.REVERSAL_TOO_LATE
    async with res.sessions() as s:
        assert (await s.get_one(Bill, old.id)).status == "PAID"


# ------------------------------------------------------------------ day-end check (日终对账)


async def test_day_end_check_every_code(res: Resources, world: BankWorld) -> None:
    serials = []
    for amount in (1_100, 1_200, 1_300):
        async with res.sessions() as s:
            _, _, bill = await bill_for_test(s, amount=amount)
        serials.append((await world.customer_pays("102", bill.payment_code))["bank_serial"])
    out = await _control(
        world.simulator_url,
        "102",
        "daycheck",
        {
            "gateway_url": world.gateway_url,
            "only": serials,
            "drop": [serials[1]],
            "amount_delta": {serials[0]: 1},
            "extra": [{"bank_serial": "102-NEVER-CONFIRMED", "amount": "9.99"}],
            "twice": True,
        },
    )
    first, second = out["answers"]
    assert first["signature_ok"]
    assert first["code"] == R.CHECK_AMOUNT_DIFFERS  # the lowest code of its findings leads
    assert {(m["bank_serial"], m["code"]) for m in first["data"]["mismatches"]} == {
        (serials[0], R.CHECK_AMOUNT_DIFFERS),
        (serials[1], R.CHECK_MISSING_AT_DAY_END),
        ("102-NEVER-CONFIRMED", R.CHECK_MISSING_INTRADAY),
    }
    amounts = {m["bank_serial"]: m for m in first["data"]["mismatches"]}
    assert (amounts[serials[0]]["our_amount"], amounts[serials[0]]["bank_amount"]) == (
        "11.00",
        "11.01",
    )
    assert second["code"] == R.CHECK_SENT_TWICE
    assert await _count(res, DayCheck) == 1
    assert await _count(res, Receipt) == 3  # a check changes no money

    # Only missing lines: each code can lead.
    missing = await _control(
        world.simulator_url,
        "103",
        "daycheck",
        {"gateway_url": world.gateway_url, "only": [],
         "extra": [{"bank_serial": "103-X", "amount": "1.00"}]},
    )  # fmt: skip
    assert missing["answers"][0]["code"] == R.CHECK_MISSING_INTRADAY


async def test_a_matching_day_end_check_and_malformed_ones(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=4_400)
    serial = (await world.customer_pays("102", bill.payment_code, pay_mode="web"))["bank_serial"]
    day = business_date(datetime.now(UTC)).isoformat()
    bad_total = {"date": day, "count": 1, "total": "1.00",
                 "payments": [{"bank_serial": "A", "amount": "2.00"}]}  # fmt: skip
    assert (await _post(world, "daycheck", bad_total))["code"] == R.PARAMETER_ERROR
    assert (await _post(world, "daycheck", {"date": "yesterday"}))["code"] == R.BAD_REQUEST
    assert (await _post(world, "daycheck", {**bad_total, "version": "2.0"}))["code"] == (
        R.VERSION_ERROR
    )
    assert await _count(res, DayCheck) == 0
    ok = await _control(
        world.simulator_url, "102", "daycheck", {"gateway_url": world.gateway_url, "only": [serial]}
    )
    assert (ok["answers"][0]["code"], ok["answers"][0]["data"]) == (R.OK, None)


# ------------------------------------------------------------------ version, lost answers


async def test_an_unsupported_version_is_10003_and_writes_nothing(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_500)
    out = await world.customer_pays(
        "102", bill.payment_code, skip_query=True, amount=5_500, version="9.9"
    )
    assert [c["code"] for c in out["confirms"]] == [R.VERSION_ERROR]
    assert await _nothing_written(res)


async def test_a_lost_answer_then_the_banks_repeat_is_one_payment(
    res: Resources, world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=7_100)
    out = await world.customer_pays(
        "102", bill.payment_code, pay_mode="app", lose_answer=True, duplicates=1
    )
    assert out["confirms"][0] == {"lost": True}
    assert out["confirms"][1]["code"] == R.OK
    assert await _count(res, Receipt, Receipt.bill_id == bill.id) == 1
    assert fen_to_yuan(7_100) == out["amount"]
