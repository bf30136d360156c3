"""Alipay wired into the payment flow, end to end (issue 4's Alipay demonstrations).

Our service runs on a real port with the official SDK aimed at the simulator; the
simulator's signed notifications reach `POST /v1/channels/alipay/notify` over HTTP; the
banks' simulator calls the same service. Worker jobs run as the worker runs them.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import func, select

from billing import webhooks as wh
from billing.models import Bill
from channels.alipay.keys import KeySet
from channels.alipay.sdk_patch import BEIJING
from channels.alipay.transforms import TIME_FORMAT, sign_content
from enotes.models import ENote
from kernel.audit import Actor
from payments.attempts import recover_attempts
from payments.models import PaymentAttempt, Receipt, Refund
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key
from tests.alipay_e2e_support import BANK, AlipayWorld
from tests.payments_support import bill_for_test
from tests.webhook_receiver import Receiver, ReceiverServer

NOTIFY = "/v1/channels/alipay/notify"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    server = ReceiverServer()
    receiver = server.start()
    yield receiver
    server.stop()


async def _post_notification(world: AlipayWorld, fields: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=world.url, timeout=30) as c:
        return await c.post(NOTIFY, content=urllib.parse.urlencode(fields), headers=FORM)


def _resign(keys: KeySet, fields: dict[str, str]) -> dict[str, str]:
    """Sign `fields` as Alipay does (its private key, sign/sign_type excluded)."""
    key = serialization.load_pem_private_key(keys.alipay_private.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    content = sign_content(fields, exclude=frozenset({"sign", "sign_type"})).encode()
    sig = key.sign(content, padding.PKCS1v15(), hashes.SHA256())
    return {**fields, "sign_type": "RSA2", "sign": base64.b64encode(sig).decode()}


# ---------------------------------------------------------------------- 1. end to end


async def test_agency_bill_paid_with_alipay_qr_end_to_end(
    alipay_world: AlipayWorld, hooks: Receiver
) -> None:
    world = alipay_world
    hooks.reset()
    agency = await make_agency_with_key(world.res)
    async with world.res.sessions() as s, s.begin():
        hook_secret = await wh.set_endpoint(
            s, agency.agency_id, hooks.url, Actor(type="system", id="test"), allow_private=True
        )
    # The agency issues a bill over the signed API, on the real port.
    async with httpx.AsyncClient(base_url=world.url, timeout=30) as http:
        api = AgencyClient(http, agency.key_id, agency.secret)  # type: ignore[arg-type]
        r = await api.post("/v1/bills", json=bill_body(unit_amount=8_880))
    assert r.status_code == 201, r.text
    bill = r.json()
    bill_id, code = uuid.UUID(bill["id"]), bill["payment_code"]
    assert bill["pay_url"] == f"{world.url}/pay/{code}"

    # The citizen starts an Alipay QR payment; the QR points at the simulator's cashier.
    attempt = await world.start_attempt(code, "alipay", "qr")
    assert (attempt["status"], attempt["amount"]) == ("PENDING", 8_880)
    assert attempt["qr_content"].endswith(f"/sim/cashier/{attempt['attempt_id']}")

    # The buyer scans and pays; the simulator notifies our service over HTTP.
    world.buyer_pays(attempt["attempt_id"])
    await world.wait_receipts(bill_id, 1)
    assert await world.counts(bill_id) == ("PAID", 1, 0)
    async with httpx.AsyncClient(base_url=world.url, timeout=30) as c:
        polled = (await c.get(f"/v1/attempts/{attempt['attempt_id']}")).json()
    assert (polled["status"], polled["bill_status"]) == ("SUCCEEDED", "PAID")
    sent = world.control("GET", "/sim/notifications")
    mine = [n for n in sent if n["out_trade_no"] == attempt["attempt_id"]]
    assert len(mine) == 1
    assert mine[0]["delivered"]
    assert mine[0]["url"] == f"{world.url}{NOTIFY}"
    assert mine[0]["attempts"][-1] == {"try": 1, "status": 200, "body": "success"}
    async with world.res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill_id))
        assert receipt is not None
        trade = world.control("GET", f"/sim/trades/{attempt['attempt_id']}")
        assert (receipt.kind, receipt.channel, receipt.amount, receipt.channel_trade_no) == (
            "PAYMENT",
            "alipay",
            8_880,
            trade["trade_no"],
        )

    # The worker: the bill.paid webhook reaches the agency's receiver, signed; one e-note.
    for _ in range(3):
        await world.run_jobs("webhooks.ingest", "webhooks.deliver", "enote.issue")
    delivered = [r for r in hooks.received() if r.answered == 200]
    assert len(delivered) >= 1
    paid = [r for r in delivered if b'"type":"bill.paid"' in r.body]
    assert len(paid) == 1
    assert wh.verify_signature(hook_secret, paid[0].headers["paygate-signature"], paid[0].body)
    assert f'"payment_code":"{code}"'.encode() in paid[0].body
    async with world.res.sessions() as s:
        notes = (await s.scalars(select(ENote).where(ENote.bill_id == bill_id))).all()
    assert [(n.receipt_id, n.total_amount) for n in notes] == [(receipt.id, 8_880)]


# ---------------------------------------------------------------------- 2. 20 copies


async def test_twenty_concurrent_copies_of_one_notification_one_receipt(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=4_200)
    attempt = await world.start_attempt(bill.payment_code)
    # The network loses the simulator's own deliveries; we replay its signed body 20×.
    world.buyer_pays(attempt["attempt_id"], lose_notification=True)
    fields = world.signed_notification(attempt["attempt_id"])
    assert fields["trade_status"] == "TRADE_SUCCESS"

    replies = await asyncio.gather(*(_post_notification(world, fields) for _ in range(20)))

    assert [(r.status_code, r.text) for r in replies] == [(200, "success")] * 20
    assert all(r.headers["content-type"].startswith("text/plain") for r in replies)
    assert await world.counts(bill.id) == ("PAID", 1, 0)


# ---------------------------------------------------------------------- 3. two channels


async def test_alipay_then_bank_both_paid_bank_duplicate_refunded_at_the_bank(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=15_000)
    attempt = await world.start_attempt(bill.payment_code)
    # The bank takes the money but its confirmation is lost (found later by our query).
    at_bank = await world.bank_pays(BANK, bill.payment_code, drop_confirm=True)
    world.buyer_pays(attempt["attempt_id"])
    await world.wait_receipts(bill.id, 1)
    assert await world.counts(bill.id) == ("PAID", 1, 0)

    await world.make_due(at_bank["order_id"])
    await world.run_jobs("payments.recover")
    assert await world.counts(bill.id) == ("PAID", 2, 1)
    await world.run_jobs("refunds.execute")

    async with world.res.sessions() as s:
        refund = await s.scalar(select(Refund).where(Refund.bill_id == bill.id))
        assert refund is not None
        assert refund.status == "SUCCEEDED"
        dup = await s.get_one(Receipt, refund.receipt_id)
        assert (dup.kind, dup.channel, dup.refunded_amount) == ("DUPLICATE", f"bank:{BANK}", 15_000)
        paid = await s.scalar(
            select(Receipt).where(Receipt.bill_id == bill.id, Receipt.kind == "PAYMENT")
        )
        assert paid is not None
        assert paid.channel == "alipay"
    state = await world.bank_state(BANK)
    assert (str(refund.id), at_bank["order_id"]) in [
        (r["refund_id"], r["order_id"]) for r in state["refunds"]
    ]
    # Alipay's trade is untouched.
    assert world.control("GET", f"/sim/trades/{attempt['attempt_id']}")["refunds"] == {}


async def test_bank_then_alipay_both_paid_alipay_duplicate_refunded_through_alipay(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=6_600)
    attempt = await world.start_attempt(bill.payment_code)
    at_bank = await world.bank_pays(BANK, bill.payment_code)
    assert at_bank["confirms"][0]["data"]["disposition"] == "PAID"
    assert await world.counts(bill.id) == ("PAID", 1, 0)

    # The Alipay buyer had the QR open and pays too: acknowledged, recorded, refunded.
    world.buyer_pays(attempt["attempt_id"])
    await world.wait_receipts(bill.id, 2)
    assert await world.counts(bill.id) == ("PAID", 2, 1)
    sent = [
        n
        for n in world.control("GET", "/sim/notifications")
        if n["out_trade_no"] == attempt["attempt_id"]
    ]
    assert sent[0]["attempts"][-1]["body"] == "success"

    await world.run_jobs("refunds.execute")
    async with world.res.sessions() as s:
        refund = await s.scalar(select(Refund).where(Refund.bill_id == bill.id))
        assert refund is not None
        assert (refund.status, refund.amount) == ("SUCCEEDED", 6_600)
        dup = await s.get_one(Receipt, refund.receipt_id)
        assert (dup.kind, dup.channel) == ("DUPLICATE", "alipay")
    trade = world.control("GET", f"/sim/trades/{attempt['attempt_id']}")
    assert trade["refunds"] == {str(refund.id): 6_600}
    assert trade["status"] == "TRADE_CLOSED"  # fully refunded
    bank_refunds = (await world.bank_state(BANK))["refunds"]
    assert at_bank["order_id"] not in [r["order_id"] for r in bank_refunds]


# ---------------------------------------------------------------------- 4. lost notification


async def test_lost_notification_is_found_by_the_recovery_job(alipay_world: AlipayWorld) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=3_000)
    attempt = await world.start_attempt(bill.payment_code)
    world.buyer_pays(attempt["attempt_id"], lose_notification=True)
    await asyncio.sleep(0.2)  # let the simulator drop its first deliveries
    assert await world.counts(bill.id) == ("ISSUED", 0, 0)
    # Not due yet: the recovery job leaves it alone.
    assert (await world.run_jobs("payments.recover"))["payments.recover"] == 0
    assert await world.counts(bill.id) == ("ISSUED", 0, 0)

    await world.make_due(attempt["attempt_id"])
    assert (await world.run_jobs("payments.recover"))["payments.recover"] == 1

    assert await world.counts(bill.id) == ("PAID", 1, 0)
    a = await world.attempt(attempt["attempt_id"])
    trade = world.control("GET", f"/sim/trades/{attempt['attempt_id']}")
    assert (a.status, a.channel_trade_no) == ("SUCCEEDED", trade["trade_no"])
    notes = list(world.control("GET", "/sim/notifications"))
    assert not any(n["delivered"] for n in notes if n["out_trade_no"] == attempt["attempt_id"])


# ---------------------------------------------------------------------- 5. bad notifications


async def test_forged_wrong_amount_wrong_app_and_unknown_order_change_nothing(
    alipay_world: AlipayWorld, alipay_keys: KeySet
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=5_000)
    attempt = await world.start_attempt(bill.payment_code)
    attempt_id = attempt["attempt_id"]
    # The buyer scans, pays 0.01 less than asked (the simulator signs that notification).
    world.control("POST", "/sim/notifications/next", {"fail": 8})
    world.control("POST", f"/sim/trades/{attempt_id}/scan", {})
    world.control("POST", f"/sim/trades/{attempt_id}/pay", {"amount": 4_999})
    wrong_amount = world.signed_notification(attempt_id)
    assert wrong_amount["total_amount"] == "49.99"
    # Forged: the right amount written in, signature left as it was.
    forged = {**wrong_amount, "total_amount": "50.00", "receipt_amount": "50.00"}
    wrong_app = _resign(alipay_keys, {**wrong_amount, "app_id": "2021999999999999"})
    unknown = _resign(alipay_keys, {**wrong_amount, "out_trade_no": str(uuid.uuid4())})
    not_ours = _resign(alipay_keys, {**wrong_amount, "out_trade_no": "ORDER-FROM-ELSEWHERE"})

    cases = {
        "forged": (forged, "unverifiable notification", True),
        "wrong_amount": (wrong_amount, "notification not applied", True),
        "wrong_app": (wrong_app, "unverifiable notification", True),
        "unknown": (unknown, "notification for an order we never issued on this channel", False),
        "not_ours": (not_ours, "notification for an order we never issued", False),
    }
    for name, (fields, event, queries) in cases.items():
        await world.make_due(attempt_id)  # then push it out: did this case schedule a query?
        async with world.res.sessions() as s, s.begin():
            a = await s.get_one(PaymentAttempt, uuid.UUID(attempt_id))
            a.next_check_at = datetime.now(UTC) + timedelta(hours=1)
        with structlog.testing.capture_logs() as logs:
            r = await _post_notification(world, fields)
        assert (r.status_code, r.text) == (400, "fail"), name
        assert event in [e["event"] for e in logs], (name, logs)
        assert await world.counts(bill.id) == ("ISSUED", 0, 0), name
        a = await world.attempt(attempt_id)
        assert a.status == "PENDING", name
        scheduled = a.next_check_at <= datetime.now(UTC)
        assert scheduled is queries, name
    async with world.res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 0
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"


# ---------------------------------------------------------------------- 6. late success


async def test_expiry_close_refused_because_paid_is_queried_and_confirmed(
    alipay_world: AlipayWorld,
) -> None:
    """Paid at Alipay, notification lost, our expiry runs: close answers
    ACQ.TRADE_STATUS_ERROR, so we query and confirm instead of closing."""
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=2_500)
    attempt = await world.start_attempt(bill.payment_code)
    world.buyer_pays(attempt["attempt_id"], lose_notification=True)
    expiry = datetime.fromisoformat(attempt["expires_at"])

    with structlog.testing.capture_logs() as logs:
        await recover_attempts(world.ctx, now=expiry + timedelta(seconds=1))

    assert any(
        e["event"] == "close refused; querying" and e["code"] == "ACQ.TRADE_STATUS_ERROR"
        for e in logs
    )
    assert await world.counts(bill.id) == ("PAID", 1, 0)
    assert (await world.attempt(attempt["attempt_id"])).status == "SUCCEEDED"


async def test_unscanned_code_closed_by_our_expiry_then_paid_is_applied(
    alipay_world: AlipayWorld,
) -> None:
    """Before the scan Alipay has no trade (close → ACQ.TRADE_NOT_EXIST): we close our
    attempt, the code stays payable at Alipay, the payer pays, the success is applied."""
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=1_800)
    attempt = await world.start_attempt(bill.payment_code)
    expiry = datetime.fromisoformat(attempt["expires_at"])
    with structlog.testing.capture_logs() as logs:
        await recover_attempts(world.ctx, now=expiry + timedelta(seconds=1))
    assert any(e.get("code") == "ACQ.TRADE_NOT_EXIST" for e in logs)
    assert (await world.attempt(attempt["attempt_id"])).status == "CLOSED"

    world.buyer_pays(attempt["attempt_id"])
    await world.wait_receipts(bill.id, 1)

    assert await world.counts(bill.id) == ("PAID", 1, 0)
    assert (await world.attempt(attempt["attempt_id"])).status == "SUCCEEDED"


async def test_late_success_on_a_closed_attempt_of_a_paid_bill_is_refunded_via_alipay(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=1_234)
    late = await world.start_attempt(bill.payment_code)
    await recover_attempts(
        world.ctx, now=datetime.fromisoformat(late["expires_at"]) + timedelta(seconds=1)
    )
    assert (await world.attempt(late["attempt_id"])).status == "CLOSED"
    fresh = await world.start_attempt(bill.payment_code)
    world.buyer_pays(fresh["attempt_id"])
    await world.wait_receipts(bill.id, 1)

    world.buyer_pays(late["attempt_id"])  # the old QR, still payable at Alipay
    await world.wait_receipts(bill.id, 2)
    assert await world.counts(bill.id) == ("PAID", 2, 1)
    await world.run_jobs("refunds.execute")

    async with world.res.sessions() as s:
        refund = await s.scalar(select(Refund).where(Refund.bill_id == bill.id))
        assert refund is not None
        assert refund.status == "SUCCEEDED"
        dup = await s.get_one(Receipt, refund.receipt_id)
        assert (dup.kind, str(dup.attempt_id)) == ("DUPLICATE", late["attempt_id"])
    assert world.control("GET", f"/sim/trades/{late['attempt_id']}")["refunds"] == {
        str(refund.id): 1_234
    }


# ---------------------------------------------------------------------- 7. timestamps


async def test_sdk_requests_carry_beijing_time(alipay_world: AlipayWorld) -> None:
    """page mode returns the signed redirect: its `timestamp` is Beijing wall time."""
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=100)
    attempt = await world.start_attempt(bill.payment_code, mode="page")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(attempt["redirect_url"]).query))
    sent = datetime.strptime(query["timestamp"], TIME_FORMAT).replace(tzinfo=BEIJING)
    assert abs(sent - datetime.now(UTC)) < timedelta(minutes=1)


async def test_default_mode_is_qr_and_an_unknown_mode_is_refused_writing_nothing(
    alipay_world: AlipayWorld,
) -> None:
    world = alipay_world
    async with world.res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=100)
    async with httpx.AsyncClient(base_url=world.url, timeout=30) as c:
        bad = await c.post(
            f"/v1/pay/{bill.payment_code}/attempts", json={"channel": "alipay", "mode": "nfc"}
        )
        good = await c.post(f"/v1/pay/{bill.payment_code}/attempts", json={"channel": "alipay"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "unsupported_mode"
    assert good.status_code == 201
    assert good.json()["mode"] == "qr"
    async with world.res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(PaymentAttempt)) == 1
