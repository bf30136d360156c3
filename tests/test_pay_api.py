"""Citizen API: bill summary by payment code, attempts, polling; cache and rate limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, update

from billing import payer as bills
from billing.models import Bill
from billing.personal import seal_payer_name
from gateway.app import create_app
from gateway.settings import Settings
from gateway.state import Resources
from kernel.clock import shanghai_today
from payments.confirm import confirm_payment
from payments.models import PaymentAttempt
from tests.payments_support import BankWorld, bill_for_test, valid_code


@pytest.fixture
async def pay_client(
    res: Resources, bank_settings: Settings
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(bank_settings)) as c:
        yield c


async def test_summary_masks_the_payer_and_adds_todays_late_fee(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    today = shanghai_today(datetime.now(UTC))
    async with res.sessions() as s:
        agency, item, bill = await bill_for_test(
            s, amount=10_000, late_fee_rule="FINE_DAILY_3PCT", due_date=today - timedelta(days=4)
        )

    r = await pay_client.get(f"/v1/pay/{bill.payment_code}")

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    assert len(r.headers["x-request-id"]) == 32
    body = r.json()
    assert body["payer_name"] == "张*"
    assert body["agency_name"] == agency.name
    assert (body["principal"], body["overdue_days"], body["late_fee"]) == (10_000, 4, 1_200)
    assert body["amount_due"] == 11_200
    assert body["status"] == "ISSUED"
    assert body["payable"] is True
    assert body["items"] == [
        {
            "item_code": item.code,
            "name": item.name,
            "quantity": 1,
            "unit_amount": 10_000,
            "amount": 10_000,
        }
    ]


async def test_bad_check_digit_is_422_and_unknown_code_404(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    code = valid_code()
    typo = code[:-1] + str((int(code[-1]) + 1) % 10)
    r = await pay_client.get(f"/v1/pay/{typo}")
    assert r.status_code == 422
    assert r.json()["code"] == "payment_code_check_failed"
    assert not await res.redis.exists(bills.cache_key(typo))
    r = await pay_client.get(f"/v1/pay/{code}")
    assert r.status_code == 404
    assert r.json()["code"] == "bill_not_found"


async def test_summary_is_cached_and_dropped_when_the_bill_is_paid(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    assert (await pay_client.get(f"/v1/pay/{bill.payment_code}")).json()["payer_name"] == "张*"
    # A change behind the cache's back is not seen: the answer came from Redis.
    async with res.sessions() as s:
        renamed = seal_payer_name(bill.id, "李四")
        await s.execute(update(Bill).where(Bill.id == bill.id).values(payer_name_enc=renamed))
        await s.commit()
    assert (await pay_client.get(f"/v1/pay/{bill.payment_code}")).json()["payer_name"] == "张*"

    async with res.sessions() as s:
        attempt = PaymentAttempt(
            bill_id=bill.id,
            channel="bank:102",
            mode="bank",
            status="PENDING",
            amount=bill.principal_amount,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )
        s.add(attempt)
        await s.commit()
    await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no=None,
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        source="test",
    )
    body = (await pay_client.get(f"/v1/pay/{bill.payment_code}")).json()
    assert (body["status"], body["payable"], body["payer_name"]) == ("PAID", False, "李*")
    assert body["refusal_code"] == "bill_not_payable"


async def test_a_memoised_summary_ends_at_the_deadline(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    """The encoded summary is reused per cached view, but not past the moment it changes:
    an exam fee stops being payable at its expiry although its cached view is the same."""
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(
            s, category="EXAM_FEE", expires_at=datetime.now(UTC) + timedelta(seconds=1.5)
        )
    url = f"/v1/pay/{bill.payment_code}"
    first, again = (await pay_client.get(url)).json(), (await pay_client.get(url)).json()
    assert first == again
    assert (first["payable"], first["refusal_code"]) == (True, None)
    await asyncio.sleep(max(0.0, (bill.expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    assert await res.redis.exists(bills.cache_key(bill.payment_code))  # same cached view
    late = (await pay_client.get(url)).json()
    assert (late["payable"], late["refusal_code"]) == (False, "bill_past_deadline")


async def test_lookups_are_rate_limited_per_client(res: Resources, bank_settings: Settings) -> None:
    tight = replace(bank_settings, payments=replace(bank_settings.payments, lookup_rate_limit=3))
    async with AsyncTestClient(app=create_app(tight)) as c:
        codes = [valid_code() for _ in range(4)]
        statuses = [(await c.get(f"/v1/pay/{code}")).status_code for code in codes]
        assert statuses == [404, 404, 404, 429]
        r = await c.get(f"/v1/pay/{codes[0]}")
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) == r.json()["retry_after"] > 0


async def test_attempt_through_a_bank_is_paid_and_polled(
    res: Resources, pay_client: AsyncTestClient[Litestar], world: BankWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=8_880)

    r = await pay_client.post(
        f"/v1/pay/{bill.payment_code}/attempts", json={"channel": "bank:102", "mode": "code"}
    )

    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["status"], created["amount"], created["channel"]) == (
        "PENDING",
        8_880,
        "bank:102",
    )
    assert "88.80" in created["instructions"]
    # The payer takes the code to bank 102: its query reuses this attempt as the order.
    out = await world.customer_pays("102", bill.payment_code)
    assert out["order_id"] == created["attempt_id"]
    polled = (await pay_client.get(f"/v1/attempts/{created['attempt_id']}")).json()
    assert (polled["status"], polled["bill_status"]) == ("SUCCEEDED", "PAID")
    assert (await pay_client.get(f"/v1/attempts/{uuid.uuid4()}")).status_code == 404


async def test_attempts_are_refused_with_clear_codes(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    async with res.sessions() as s:
        _, _, cancelled = await bill_for_test(s, status="CANCELLED")
        _, _, exam = await bill_for_test(
            s, category="EXAM_FEE", expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
        _, _, ok = await bill_for_test(s)

    async def attempt(code: str, body: dict[str, object]) -> tuple[int, str]:
        r = await pay_client.post(f"/v1/pay/{code}/attempts", json=body)
        return r.status_code, r.json().get("code", "")

    bank = {"channel": "bank:102", "mode": "code"}
    assert await attempt(cancelled.payment_code, bank) == (409, "bill_cancelled")
    assert await attempt(exam.payment_code, bank) == (409, "bill_past_deadline")
    assert await attempt(ok.payment_code, {"channel": "nope", "mode": "x"}) == (
        422,
        "unknown_channel",
    )
    # The client never sends an amount.
    status, _ = await attempt(ok.payment_code, {**bank, "amount": 1})
    assert status in {400, 422}
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 0


async def test_citizen_and_agency_see_the_same_amount_due(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    """The rule is the one the bill was issued under (a later catalogue change does not
    move it), and the citizen amount is the agency's `amount_due_today`."""
    from billing.bills import get_bill
    from billing.models import RevenueItem

    today = shanghai_today(datetime.now(UTC))
    async with res.sessions() as s:
        agency, item, bill = await bill_for_test(
            s, amount=10_000, late_fee_rule="FINE_DAILY_3PCT", due_date=today - timedelta(days=4)
        )
        (await s.get_one(RevenueItem, item.code)).late_fee_rule = "NONE"
        await s.commit()
        agency_view = (await get_bill(s, agency.id, bill.id)).due_today
    body = (await pay_client.get(f"/v1/pay/{bill.payment_code}")).json()
    assert (body["late_fee"], body["amount_due"]) == (agency_view.late_fee, agency_view.total)
    assert body["amount_due"] == 11_200


async def test_a_fine_past_its_expiry_is_payable_to_everyone_until_the_expiry_job(
    res: Resources, pay_client: AsyncTestClient[Litestar]
) -> None:
    """Between a fine's expiry and the expiry job, the citizen page, a new attempt and the
    agency API give one answer (payable, the same amount), and after the job one other."""
    from billing.bills import expire_due, get_bill

    today = shanghai_today(datetime.now(UTC))
    async with res.sessions() as s:
        agency, _, fine = await bill_for_test(
            s,
            amount=10_000,
            late_fee_rule="FINE_DAILY_3PCT",
            due_date=today - timedelta(days=4),
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
    url = f"/v1/pay/{fine.payment_code}"

    async def agency_sees() -> tuple[bool, int]:
        async with res.sessions() as s:
            view = await get_bill(s, agency.id, fine.id)
        return view.payable, view.due_today.total

    citizen = (await pay_client.get(url)).json()
    assert (citizen["payable"], citizen["refusal_code"], citizen["amount_due"]) == (
        True,
        None,
        11_200,
    )
    assert await agency_sees() == (True, 11_200)
    r = await pay_client.post(f"{url}/attempts", json={"channel": "bank:102", "mode": "code"})
    assert (r.status_code, r.json()["amount"]) == (201, 11_200), r.text

    async with res.sessions() as s:
        assert fine.payment_code in await expire_due(s)
        await s.commit()
    await bills.invalidate(res.redis, fine.payment_code)

    citizen = (await pay_client.get(url)).json()
    assert (citizen["payable"], citizen["refusal_code"]) == (False, "bill_expired")
    assert (await agency_sees())[0] is False
    r = await pay_client.post(f"{url}/attempts", json={"channel": "bank:102", "mode": "code"})
    assert (r.status_code, r.json()["code"]) == (409, "bill_expired")
