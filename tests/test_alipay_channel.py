"""The Alipay adapter against the simulator, over real HTTP with the unmodified SDK."""

from __future__ import annotations

import asyncio
import http.client
import secrets
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta

import pytest

from channels.alipay.adapter import AlipayAdapter, load_public_key, verify_rsa2
from channels.alipay.config import AlipayConfig
from channels.alipay.keys import KeySet
from channels.alipay.transforms import BEIJING, NOTIFY_UNSIGNED, sign_content
from channels.base import (
    ChannelAdapter,
    CreatePayment,
    InvalidNotification,
    OutcomeUnknown,
    RefundRequest,
    RefundState,
    Rejected,
    StatementKind,
    TradeState,
    Unavailable,
)
from gateway.procs import free_port
from tests.alipay_support import Receiver, SimServer, settings_for


def _browse(url: str) -> tuple[str, str]:
    """What a buyer's browser does with a redirect URL: follow it, read the page."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.url), resp.read().decode()


def _click_pay(base_url: str, attempt: str) -> tuple[int, str]:
    """POST the cashier's Pay form without following the redirect."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("POST", f"/sim/cashier/{attempt}", body=b"")
        resp = conn.getresponse()
        return resp.status, resp.getheader("location") or ""
    finally:
        conn.close()


def _attempt() -> str:
    return f"T{secrets.token_hex(8)}"


def _create(attempt_id: str, amount: int, notify_url: str, mode: str = "qr") -> CreatePayment:
    return CreatePayment(
        attempt_id=attempt_id,
        amount=amount,
        subject="交通违法罚没收入",
        mode=mode,
        expires_at=datetime.now(BEIJING) + timedelta(minutes=30),
        notify_url=notify_url,
        return_url="http://127.0.0.1:9/return",
    )


async def _paid(alipay: AlipayAdapter, sim: SimServer, notify_url: str, amount: int = 8880) -> str:
    attempt = _attempt()
    await alipay.create_payment(_create(attempt, amount, notify_url))
    assert sim.control("POST", f"/sim/trades/{attempt}/pay")[0] == 200
    return attempt


def test_adapter_implements_the_protocol(alipay: AlipayAdapter) -> None:
    assert isinstance(alipay, ChannelAdapter)
    assert alipay.ack().body == b"success"


async def test_qr_lifecycle_query_and_close(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    attempt = _attempt()
    created = await alipay.create_payment(_create(attempt, 8880, notify_receiver.url))
    assert created.qr_content is not None
    assert created.qr_content.endswith(f"/sim/cashier/{attempt}")

    # Before the scan Alipay has no trade: query says NOT_FOUND, close is rejected.
    assert (await alipay.query_payment(attempt)).state is TradeState.NOT_FOUND
    with pytest.raises(Rejected) as not_exist:
        await alipay.close_payment(attempt)
    assert not_exist.value.code == "ACQ.TRADE_NOT_EXIST"

    assert alipay_sim.control("POST", f"/sim/trades/{attempt}/scan")[0] == 200
    pending = await alipay.query_payment(attempt)
    assert pending.state is TradeState.PENDING
    assert pending.paid_at is None

    before = datetime.now(BEIJING).replace(microsecond=0)
    assert alipay_sim.control("POST", f"/sim/trades/{attempt}/pay")[0] == 200
    paid = await alipay.query_payment(attempt)
    assert paid.state is TradeState.SUCCEEDED
    assert paid.amount == 8880
    assert paid.channel_trade_no
    assert paid.buyer_id
    assert paid.paid_at is not None
    assert paid.paid_at >= before
    assert paid.paid_at.utcoffset() == timedelta(hours=8)

    # Closing a paid trade is refused with Alipay's signed business error.
    with pytest.raises(Rejected) as paid_close:
        await alipay.close_payment(attempt)
    assert paid_close.value.code == "ACQ.TRADE_STATUS_ERROR"


async def test_close_unpaid_trade_then_precreate_again_is_refused(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    attempt = _attempt()
    await alipay.create_payment(_create(attempt, 100, notify_receiver.url))
    alipay_sim.control("POST", f"/sim/trades/{attempt}/scan")
    await alipay.close_payment(attempt)
    assert (await alipay.query_payment(attempt)).state is TradeState.CLOSED
    with pytest.raises(Rejected) as again:
        await alipay.create_payment(_create(attempt, 100, notify_receiver.url))
    assert again.value.code == "ACQ.TRADE_HAS_CLOSE"
    status, _ = alipay_sim.control("POST", f"/sim/trades/{attempt}/pay")
    assert status == 409


@pytest.mark.parametrize("mode", ["page", "wap"])
async def test_page_and_wap_pay_redirect_through_the_cashier(
    alipay: AlipayAdapter,
    alipay_sim: SimServer,
    notify_receiver: Receiver,
    alipay_settings: AlipayConfig,
    mode: str,
) -> None:
    attempt = _attempt()
    created = await alipay.create_payment(_create(attempt, 1234, notify_receiver.url, mode))
    assert created.redirect_url is not None
    assert created.redirect_url.startswith(alipay_sim.gateway_url)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(created.redirect_url).query))
    assert query["method"] == f"alipay.trade.{mode}.pay"

    # The buyer's browser follows the signed URL: the simulator verifies it and redirects.
    final_url, page = await asyncio.to_thread(_browse, created.redirect_url)
    assert final_url.endswith(f"/sim/cashier/{attempt}")
    assert "确认付款" in page
    assert (await alipay.query_payment(attempt)).state is TradeState.PENDING

    # The buyer clicks "Pay": back to our return_url with Alipay-signed parameters.
    status, location = await asyncio.to_thread(_click_pay, alipay_sim.url, attempt)
    assert status == 302
    assert location.startswith("http://127.0.0.1:9/return?")
    back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert (back["out_trade_no"], back["total_amount"]) == (attempt, "12.34")
    content = sign_content(back, exclude=NOTIFY_UNSIGNED).encode()
    assert verify_rsa2(load_public_key(alipay_settings.alipay_public_key()), content, back["sign"])
    assert (await alipay.query_payment(attempt)).state is TradeState.SUCCEEDED
    note = alipay.parse_notification(
        (await notify_receiver.wait_for(1))[0], notify_receiver.content_types[0]
    )
    assert (note.attempt_id, note.amount) == (attempt, 1234)

    # A tampered redirect is refused by signature.
    forged = created.redirect_url.replace("12.34", "0.01")
    assert "isv.invalid-signature" in (await asyncio.to_thread(_browse, forged))[1]


async def test_notification_verified_and_retried_with_same_notify_id(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    notify_receiver.answers.append((500, b"busy"))  # first delivery fails
    attempt = await _paid(alipay, alipay_sim, notify_receiver.url, amount=8880)
    first, second = (await notify_receiver.wait_for(2))[:2]
    assert notify_receiver.content_types[0].startswith("application/x-www-form-urlencoded")

    n1 = alipay.parse_notification(first, notify_receiver.content_types[0])
    n2 = alipay.parse_notification(second, notify_receiver.content_types[1])
    assert n1.notify_id == n2.notify_id
    assert n1.attempt_id == attempt
    assert n1.state is TradeState.SUCCEEDED
    assert n1.amount == 8880
    assert n1.app_id == alipay_sim.app.app_id
    assert n1.paid_at is not None
    assert "sign" not in n1.raw

    _, sent = alipay_sim.control("GET", "/sim/notifications")
    mine = [n for n in sent if n["out_trade_no"] == attempt]
    assert len(mine) == 1
    assert [a["status"] for a in mine[0]["attempts"]] == [500, 200]
    assert mine[0]["delivered"] is True


async def test_forged_or_foreign_notifications_are_invalid(
    alipay: AlipayAdapter,
    alipay_sim: SimServer,
    notify_receiver: Receiver,
    alipay_keys: KeySet,
    alipay_settings: AlipayConfig,
) -> None:
    await _paid(alipay, alipay_sim, notify_receiver.url, amount=500)
    body = (await notify_receiver.wait_for(1))[0]
    ctype = "application/x-www-form-urlencoded; charset=utf-8"
    fields = dict(urllib.parse.parse_qsl(body.decode()))
    assert alipay.parse_notification(body, ctype).amount == 500

    def encode(**changes: str) -> bytes:
        return urllib.parse.urlencode({**fields, **changes}).encode()

    tampered = encode(total_amount="0.01")
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(tampered, ctype)
    sig = fields["sign"]
    forged = encode(sign=sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:])
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(forged, ctype)
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(encode(sign="not base64!"), ctype)
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(b"%zz=1&&", ctype)
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(body, "application/json")
    # sign_type is outside the signed content, but anything but RSA2 is refused.
    with pytest.raises(InvalidNotification):
        alipay.parse_notification(encode(sign_type="RSA"), ctype)

    # A correctly signed notification for another app is still not ours.
    other = AlipayAdapter(
        settings_for(alipay_keys, alipay_settings.gateway_url, app_id="2021999999999999")
    )
    try:
        with pytest.raises(InvalidNotification):
            other.parse_notification(body, ctype)
    finally:
        await other.aclose()


async def test_duplicate_and_late_notifications(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    alipay_sim.control("POST", "/sim/notifications/next", {"duplicate": True, "delay_s": 1.0})
    attempt = await _paid(alipay, alipay_sim, notify_receiver.url)
    await asyncio.sleep(0.1)
    assert notify_receiver.bodies == []  # still held back
    a, b = (await notify_receiver.wait_for(2))[:2]
    assert a == b
    assert alipay.parse_notification(a, notify_receiver.content_types[0]).attempt_id == attempt


async def test_refunds_partial_rest_idempotent_and_query(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    attempt = await _paid(alipay, alipay_sim, notify_receiver.url, amount=10000)
    await notify_receiver.wait_for(1)

    first = RefundRequest(
        refund_id=f"R{attempt}1", attempt_id=attempt, amount=3000, reason="重复缴款"
    )
    r1 = await alipay.refund(first)
    assert (r1.state, r1.amount) == (RefundState.SUCCEEDED, 3000)
    assert r1.refunded_at is not None
    # Retrying the same out_request_no is answered (fund_change=N) without moving money.
    again = await alipay.refund(first)
    assert again.state is RefundState.SUCCEEDED
    assert alipay_sim.control("GET", f"/sim/trades/{attempt}")[1]["refunded"] == 3000
    # The same refund id with another amount is a discordant request.
    with pytest.raises(Rejected) as discordant:
        await alipay.refund(
            RefundRequest(refund_id=first.refund_id, attempt_id=attempt, amount=10, reason="x")
        )
    assert discordant.value.code == "ACQ.DISCORDANT_REPEAT_REQUEST"
    # More than what is left is refused.
    with pytest.raises(Rejected) as too_much:
        await alipay.refund(
            RefundRequest(refund_id=f"R{attempt}x", attempt_id=attempt, amount=7001, reason="x")
        )
    assert too_much.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"

    rest = RefundRequest(refund_id=f"R{attempt}2", attempt_id=attempt, amount=7000, reason="退付")
    assert (await alipay.refund(rest)).state is RefundState.SUCCEEDED
    assert (await alipay.query_payment(attempt)).state is TradeState.CLOSED

    q1 = await alipay.query_refund(first.refund_id, attempt)
    assert (q1.state, q1.amount) == (RefundState.SUCCEEDED, 3000)
    assert q1.refunded_at is not None
    missing = await alipay.query_refund("nope", attempt)
    assert missing.state is RefundState.NOT_FOUND
    assert (await alipay.query_refund("nope", "no-such-trade")).state is RefundState.NOT_FOUND

    # Refunds notify too: partial keeps TRADE_SUCCESS, the full one closes the trade.
    bodies = await notify_receiver.wait_for(3)
    notes = [alipay.parse_notification(b, notify_receiver.content_types[0]) for b in bodies]
    refunds = {n.refund_id: n.state for n in notes if n.refund_id}
    assert refunds == {first.refund_id: TradeState.SUCCEEDED, rest.refund_id: TradeState.CLOSED}


async def test_statement_fetch_and_parse(
    alipay: AlipayAdapter, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    # Bills are T+1: move the simulator's clock back a day, trade, then fetch "yesterday".
    alipay_sim.control("POST", "/sim/clock", {"offset_s": -86400})
    try:
        paid = await _paid(alipay, alipay_sim, notify_receiver.url, amount=12345)
        refunded = await _paid(alipay, alipay_sim, notify_receiver.url, amount=2000)
        await alipay.refund(
            RefundRequest(refund_id=f"R{refunded}", attempt_id=refunded, amount=1999, reason="x")
        )
        day = datetime.now(BEIJING).date() - timedelta(days=1)
    finally:
        alipay_sim.control("POST", "/sim/clock", {"offset_s": 0})

    with pytest.raises(Rejected) as not_yet:
        await alipay.fetch_statement(datetime.now(BEIJING).date())
    assert not_yet.value.code == "isp.bill_not_exist"

    raw = await alipay.fetch_statement(day)
    assert raw[:2] == b"PK"
    lines = alipay.parse_statement(raw)
    mine = {(ln.attempt_id, ln.kind): ln for ln in lines if ln.attempt_id in {paid, refunded}}
    assert mine[(paid, StatementKind.PAYMENT)].amount == 12345
    # The bill shows 服务费 -0.74 (deducted); the parsed fee is what we were charged.
    assert mine[(paid, StatementKind.PAYMENT)].fee == 74  # 0.6 % of 123.45, as Alipay rounds
    assert mine[(refunded, StatementKind.PAYMENT)].amount == 2000
    refund_line = mine[(refunded, StatementKind.REFUND)]
    assert refund_line.amount == -1999
    assert refund_line.fee == -12  # the fee on 19.99 is given back (+0.12 in the bill)
    assert refund_line.refund_id == f"R{refunded}"
    assert refund_line.occurred_at.date() == day
    assert refund_line.channel_trade_no
    assert "\t" not in refund_line.channel_trade_no


async def test_unavailable_when_nothing_listens(alipay_keys: KeySet) -> None:
    dead = settings_for(alipay_keys, f"http://127.0.0.1:{free_port()}/gateway.do")
    adapter = AlipayAdapter(dead)
    try:
        with pytest.raises(Unavailable):
            await adapter.query_payment("T1")
        with pytest.raises(Unavailable):
            await adapter.create_payment(_create("T1", 100, "http://127.0.0.1:9/n"))
    finally:
        await adapter.aclose()


async def test_outcome_unknown_on_read_timeout_and_5xx(
    alipay_keys: KeySet, alipay_sim: SimServer, notify_receiver: Receiver
) -> None:
    adapter = AlipayAdapter(settings_for(alipay_keys, alipay_sim.gateway_url, timeout_s=0.5))
    try:
        attempt = _attempt()
        alipay_sim.control("POST", "/sim/gateway/next", {"delay_s": 1.5, "count": 1})
        with pytest.raises(OutcomeUnknown):
            await adapter.create_payment(_create(attempt, 100, notify_receiver.url))
        # The request did reach Alipay and took effect late: the trade appears.
        deadline = time.monotonic() + 10
        while alipay_sim.control("POST", f"/sim/trades/{attempt}/scan")[0] != 200:
            assert time.monotonic() < deadline, "the delayed precreate never landed"
            await asyncio.sleep(0.05)

        alipay_sim.control("POST", "/sim/gateway/next", {"status": 502, "count": 1})
        with pytest.raises(OutcomeUnknown):
            await adapter.query_payment(attempt)
        assert (await adapter.query_payment(attempt)).state is TradeState.PENDING
    finally:
        await adapter.aclose()


async def test_signature_mismatch_is_rejected_with_alipays_error(
    alipay_keys: KeySet, alipay_sim: SimServer, tmp_path: object
) -> None:
    from pathlib import Path

    from channels.alipay.keys import ensure_keys

    stranger = ensure_keys(Path(str(tmp_path)) / "other")
    adapter = AlipayAdapter(
        settings_for(alipay_keys, alipay_sim.gateway_url, app_private_key_path=stranger.app_private)
    )
    try:
        with pytest.raises(Rejected) as bad:
            await adapter.query_payment("T1")
        assert bad.value.code == "isv.invalid-signature"
    finally:
        await adapter.aclose()


async def test_response_signed_by_someone_else_is_outcome_unknown(
    alipay_keys: KeySet, alipay_sim: SimServer, tmp_path: object
) -> None:
    from pathlib import Path

    from channels.alipay.keys import ensure_keys

    stranger = ensure_keys(Path(str(tmp_path)) / "other")
    adapter = AlipayAdapter(
        settings_for(
            alipay_keys, alipay_sim.gateway_url, alipay_public_key_path=stranger.alipay_public
        )
    )
    try:
        with pytest.raises(OutcomeUnknown):
            await adapter.query_payment("T1")
    finally:
        await adapter.aclose()
