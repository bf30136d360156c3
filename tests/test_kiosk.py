"""Self-service kiosks end to end: the simulated kiosks call our service over real HTTP and
charge through the simulated acquirer, which our refunds reach."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

import ledger
from billing.models import Bill
from channels.base import Outcome
from channels.kiosk import transforms as t
from channels.kiosk.inbound import KioskConfirm, KioskUpload
from enotes.models import ENote
from enotes.service import run_issue_job
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kiosks import devices, kiosk
from kiosks.models import KioskConfirmation, KioskDevice, KioskGap
from payments import inbound
from payments.confirm import APPLY_GROUPS, confirm_payment
from payments.models import PaymentAttempt, Receipt, Refund
from payments.refunds import execute_refunds
from settlement import reports
from tests.kiosk_support import ADMIN, KioskWorld
from tests.payments_support import bill_for_test, open_attempt

OK = t.ResultCode.OK


def _device_id() -> str:
    return f"K-{secrets.token_hex(4)}"


async def _counts(res: Resources) -> dict[str, int]:
    tables = (
        "kiosk_confirmations",
        "kiosk_gaps",
        "receipts",
        "payment_attempts",
        "refunds",
        "journal_entries",
        "outbox",
    )
    async with res.engine.connect() as conn:
        return {
            name: int((await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one())
            for name in tables
        }


async def _device(res: Resources, device_id: str) -> KioskDevice:
    async with res.sessions() as s:
        return await s.get_one(KioskDevice, device_id)


async def test_a_bill_paid_at_a_kiosk(
    res: Resources, kiosk_world: KioskWorld, settings: Settings
) -> None:
    dev = _device_id()
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s, amount=12_345)

    out = await kiosk_world.pay(dev, bill.payment_code)

    query = out["query"]
    assert (query["code"], query["signature_ok"]) == (OK, True)
    assert query["data"]["amount"] == "123.45"
    assert query["data"]["payer_name"] == "张*"
    [confirm] = out["confirms"]
    assert (confirm["code"], confirm["signature_ok"]) == (OK, True)
    data = confirm["data"]
    assert (data["seq"], data["disposition"], data["order_id"]) == (1, "PAID", out["order_id"])
    slip = data["receipt"]
    assert slip["copy"] == "ORIGINAL"
    assert "金额：¥123.45" in slip["lines"]
    assert "大写：壹佰贰拾叁元肆角伍分" in slip["lines"]
    # No e-note yet: the QR is the payer's page, which shows the note once issued.
    public = settings.server.public_url
    assert slip["qr"] == {"kind": "LINK", "content": f"{public}/pay/{bill.payment_code}"}
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt))
        assert receipt is not None
        assert (
            receipt.channel,
            receipt.pay_mode,
            receipt.channel_trade_no,
            receipt.kind,
            receipt.amount,
        ) == ("kiosk", "KIOSK", out["acquirer_ref"], "PAYMENT", 12_345)
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
        day = receipt.business_date
        by_mode = await reports.totals(s, group_by="pay_mode", start=day, end=day)
        by_channel = await reports.totals(s, group_by="channel_pay_mode", start=day, end=day)
    assert [(r["key"], r["count"], r["amount"]) for r in by_mode] == [("KIOSK", 1, 12_345)]
    assert [r["key"] for r in by_channel] == ["kiosk/KIOSK"]

    # The e-note is issued by the worker; the reprint (补打) then carries its QR.
    assert await run_issue_job(res.sessions, enote_context(settings)) == 1
    reprint = await kiosk_world.reprint(dev, 1)
    assert (reprint["code"], reprint["signature_ok"]) == (OK, True)
    again = reprint["data"]["receipt"]
    assert again["copy"] == "REPRINT"
    assert again["qr"]["kind"] == "ENOTE"
    assert again["qr"]["content"].startswith(f"{public}/enotes/verify?")
    async with res.sessions() as s:
        note = (await s.scalars(select(ENote).where(ENote.kind == "BLUE"))).one()
    assert json.loads(note.content)["main"]["pay_mode"] == "自助终端"
    # A number the device never used has no receipt to print.
    assert (await kiosk_world.reprint(dev, 99))["code"] == t.ResultCode.UNKNOWN_SEQ


async def test_the_usual_confirmation_is_recorded_and_paid_by_one_statement(
    res: Resources, kiosk_world: KioskWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our open order, its reference new, the bill simply payable, the ledger's accounts
    there (a channel's first receipt makes them): the statement that records the sequence
    number pays the bill too, and the slip is made from the facts in hand."""
    async with res.sessions() as s:
        await ledger.account_ids(s, [c for c, _ in ledger.receipt_lines("PAYMENT", "kiosk", 1)])
        await s.commit()
        _, _, bill = await bill_for_test(s, amount=12_345)
    separate: list[int] = []
    run = APPLY_GROUPS._run

    async def counting(batch: list[Any]) -> list[Any]:
        separate.append(len(batch))
        return await run(batch)

    monkeypatch.setattr(APPLY_GROUPS, "_run", counting)
    dev = _device_id()
    await kiosk_world.register(dev)
    out = await kiosk_world.pay(dev, bill.payment_code)
    [confirm] = out["confirms"]
    assert (confirm["code"], confirm["signature_ok"]) == (OK, True)
    assert (confirm["data"]["disposition"], confirm["data"]["order_id"]) == (
        "PAID",
        out["order_id"],
    )
    assert separate == []  # no payment statement of its own
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt))
        assert receipt is not None
        assert str(receipt.id) == confirm["data"]["receipt_id"]
        assert (receipt.channel_trade_no, receipt.kind, receipt.amount, receipt.pay_mode) == (
            out["acquirer_ref"],
            "PAYMENT",
            12_345,
            "KIOSK",
        )
        assert (await s.get_one(Bill, bill.id)).status == "PAID"
        attempt = await s.get_one(PaymentAttempt, uuid.UUID(out["order_id"]))
        assert (attempt.status, attempt.channel_trade_no) == ("SUCCEEDED", out["acquirer_ref"])
        recorded = (await s.scalars(select(KioskConfirmation))).one()
        assert (recorded.device_id, recorded.seq) == (dev, 1)
    counts = await _counts(res)
    assert (counts["receipts"], counts["journal_entries"]) == (1, 1)

    # Made from the facts in hand, the live slip says what the receipt read afresh says
    # (a reprint has no card number: only the live message carries it).
    slip = confirm["data"]["receipt"]
    early = (await kiosk_world.reprint(dev, 1))["data"]["receipt"]
    assert early["lines"][0] == slip["lines"][0] + "（补打）"
    assert early["qr"] == slip["qr"]
    paid_by = next(n for n, line in enumerate(slip["lines"]) if line.startswith("支付方式"))
    assert slip["lines"][paid_by].startswith(early["lines"][paid_by] + " 622202")
    del early["lines"][paid_by], slip["lines"][paid_by]
    assert early["lines"][1:] == slip["lines"][1:]


async def test_fifty_stored_confirmations_uploaded_out_of_order_and_twice(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = _device_id()
    await kiosk_world.register(dev)
    bills = []
    async with res.sessions() as s:
        for _ in range(50):
            bills.append((await bill_for_test(s, amount=5_000))[2])
    # The link is down: the kiosk takes 50 payments and keeps their confirmations.
    taken = [await kiosk_world.pay(dev, b.payment_code, offline=True) for b in bills]
    assert [p["seq"] for p in taken] == list(range(1, 51))
    assert all(p["confirms"] == [] for p in taken)
    # Meanwhile the payer of bill #7 paid it again at the bank.
    paid_elsewhere = bills[6]
    bank_attempt = await open_attempt(res.sessions, paid_elsewhere, channel="bank:102")
    bank = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=bank_attempt.id,
        channel_trade_no="102BANKSERIAL0007",
        amount=5_000,
        paid_at=datetime.now(UTC),
        source="confirm:bank:102",
        channel="bank:102",
    )
    assert bank.outcome == "APPLIED"

    # Back online: the heartbeat announces 50, all 50 are gaps until they arrive.
    beat = await kiosk_world.heartbeat(dev)
    assert (beat["code"], beat["data"]["missing"]) == (OK, [[1, 50]])
    assert [(g.first, g.last) for g in await kiosk.open_gaps(kiosk_world.ctx, dev)] == [(1, 50)]

    # Uploaded in shuffled batches, each batch twice, numbers 20-22 held back.
    up = await kiosk_world.upload(dev, batch=7, reorder=True, twice=True, withhold=[20, 21, 22])
    assert up["stored"] == [20, 21, 22]
    assert all(u["code"] == OK and u["signature_ok"] for u in up["uploads"])
    results = [r for u in up["uploads"] for r in u["data"]["results"]]
    assert len(results) == 2 * 47
    assert {r["code"] for r in results} == {OK}
    assert up["uploads"][-1]["data"]["missing"] == [[20, 22]]
    gaps = await kiosk.open_gaps(kiosk_world.ctx, dev)
    assert [(g.device_id, g.first, g.last, g.count) for g in gaps] == [(dev, 20, 22, 3)]

    # The held-back ones arrive (and once more): the gap closes.
    last = await kiosk_world.upload(dev, twice=True)
    assert last["stored"] == []
    assert last["uploads"][-1]["data"]["missing"] == []
    assert await kiosk.open_gaps(kiosk_world.ctx, dev) == []
    async with res.sessions() as s:
        closed = await s.scalar(
            select(func.count()).select_from(KioskGap).where(KioskGap.closed_at.is_not(None))
        )
        assert closed == 50

    # Each applied once: 50 recorded, 50 kiosk receipts — 49 payments and one duplicate.
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(KioskConfirmation)) == 50
        kinds = (
            await s.execute(
                select(Receipt.kind, func.count())
                .where(Receipt.channel == "kiosk")
                .group_by(Receipt.kind)
            )
        ).all()
        assert dict(kinds) == {"PAYMENT": 49, "DUPLICATE": 1}
        statuses = (
            await s.scalars(select(Bill.status).where(Bill.id.in_([b.id for b in bills])))
        ).all()
        assert set(statuses) == {"PAID"}
        duplicate = await s.scalar(select(Receipt).where(Receipt.kind == "DUPLICATE"))
        assert duplicate is not None
        assert duplicate.bill_id == paid_elsewhere.id
        assert (duplicate.channel_trade_no, duplicate.pay_mode) == (
            taken[6]["acquirer_ref"],
            "KIOSK",
        )
    seven = [r for r in results if r["seq"] == 7]
    assert {r["disposition"] for r in seven} == {"REFUND"}

    # The duplicate's refund goes back through the acquirer that took the money.
    assert await execute_refunds(kiosk_world.ctx) == 1
    async with res.sessions() as s:
        refund = await s.scalar(select(Refund))
        assert refund is not None
        assert (refund.status, refund.amount, refund.receipt_id) == (
            "SUCCEEDED",
            5_000,
            duplicate.id,
        )
    acquirer = await kiosk_world.acquirer()
    assert [
        (r["refund_id"], r["reference"], r["amount"])
        for r in acquirer["refunds"]
        if r["refund_id"] == str(refund.id)
    ] == [(str(refund.id), taken[6]["acquirer_ref"], 5_000)]
    assert await execute_refunds(kiosk_world.ctx) == 0


async def test_a_lost_answer_is_uploaded_again_and_applied_once(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = _device_id()
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await kiosk_world.pay(dev, bill.payment_code, lost_answer=True, duplicates=1)
    assert out["confirms"] == []
    up = await kiosk_world.upload(dev)
    [result] = up["uploads"][0]["data"]["results"]
    assert (result["seq"], result["code"], result["disposition"]) == (1, OK, "PAID")
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 1


async def test_a_charge_without_an_order_and_one_of_the_wrong_amount(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = _device_id()
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, first = await bill_for_test(s)
        _, _, second = await bill_for_test(s)
    by_code = await kiosk_world.pay(dev, first.payment_code, no_order=True)
    assert by_code["confirms"][0]["data"]["disposition"] == "PAID"
    wrong = await kiosk_world.pay(dev, second.payment_code, no_order=True, amount_delta=1)
    assert wrong["confirms"][0]["code"] == t.ResultCode.AMOUNT_DIFFERS
    async with res.sessions() as s:
        assert (await s.get_one(Bill, first.id)).status == "PAID"
        assert (await s.get_one(Bill, second.id)).status == "ISSUED"
        # The refused charge is still the device's number 2: recorded, so it is no gap.
        assert await s.scalar(select(func.count()).select_from(KioskConfirmation)) == 2
    assert await kiosk.open_gaps(kiosk_world.ctx, dev) == []


async def test_conflicting_repeat_of_a_sequence_number_changes_nothing(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = _device_id()
    issued = await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await kiosk_world.pay(dev, bill.payment_code)
    assert out["confirms"][0]["code"] == OK
    before = await _counts(res)
    # The same number 1 again, for another charge: refused, nothing written.
    body = {
        "seq": 1,
        "payment_code": bill.payment_code,
        "amount": "200.00",
        "paid_at": t.format_time(datetime.now(UTC)),
        "acquirer_ref": "OTHERREF0001",
        "method": "QR",
    }
    answer = await _send(kiosk_world, dev, "confirm", body, secret=issued.secret)
    assert answer["code"] == t.ResultCode.CONFLICT
    assert await _counts(res) == before
    # A number far past the device's highest is a broken counter: refused, no gaps opened.
    jump = body | {"seq": 1 + t.MAX_SEQ_JUMP + 1, "acquirer_ref": "OTHERREF0002"}
    answer = await _send(kiosk_world, dev, "confirm", jump, secret=issued.secret)
    assert answer["code"] == t.ResultCode.BAD_REQUEST
    assert await _counts(res) == before
    assert (await _device(res, dev)).last_seq == 1


async def _send(
    world: KioskWorld,
    device_id: str,
    operation: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    headers: dict[str, str] | None = None,
) -> Any:
    import httpx

    body = json.dumps(payload).encode()
    headers = headers or t.request_headers(
        operation, device_id, body, secret=(secret or "x" * 64).encode()
    )
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"{world.gateway_url}/v1/channels/kiosk/{operation}", content=body, headers=headers
        )
    assert r.status_code == 200
    return r.json()


async def test_unknown_disabled_forged_and_replayed_messages_write_nothing(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    # Unknown device: the simulator holds a key the platform never issued.
    stranger = _device_id()
    await kiosk_world.load(stranger, secret=secrets.token_hex(32))
    before = await _counts(res)
    out = await kiosk_world.pay(stranger, bill.payment_code)
    assert (out["query"]["code"], out["query"]["signature_ok"]) == (
        t.ResultCode.UNKNOWN_DEVICE,
        False,
    )
    assert (await kiosk_world.heartbeat(stranger))["code"] == t.ResultCode.UNKNOWN_DEVICE
    assert await _counts(res) == before

    # Disabled device: refused with its code, its heartbeat not even recorded.
    dev = _device_id()
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        await devices.set_enabled(s, dev, enabled=False, actor=ADMIN)
        await s.commit()
    before = await _counts(res)
    out = await kiosk_world.pay(dev, bill.payment_code)
    assert (out["query"]["code"], out["query"]["signature_ok"]) == (
        t.ResultCode.UNKNOWN_DEVICE,
        True,
    )
    assert (await kiosk_world.heartbeat(dev))["code"] == t.ResultCode.UNKNOWN_DEVICE
    assert await _counts(res) == before
    assert (await _device(res, dev)).last_heartbeat_at is None

    # Forged: a confirmation signed with another key changes nothing (the query that
    # preceded it, properly signed, opened its attempt).
    ok = _device_id()
    await kiosk_world.register(ok)
    forged = await kiosk_world.pay(ok, bill.payment_code, forged=True, offline=False)
    assert forged["query"]["code"] == OK
    after_query = await _counts(res)
    assert [c["code"] for c in forged["confirms"]] == [t.ResultCode.BAD_SIGNATURE]
    forged_upload = await kiosk_world.upload(ok, forged=True)
    assert forged_upload["uploads"][0]["code"] == t.ResultCode.BAD_SIGNATURE
    assert forged_upload["stored"] == [1]
    assert await _counts(res) == after_query
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"

    # Replayed: the same signed bytes twice — the second is refused and writes nothing.
    async with res.sessions() as s:
        _, _, other = await bill_for_test(s)
    replay = await kiosk_world.pay(ok, other.payment_code, replay=True)
    codes = [c["code"] for c in replay["confirms"]]
    assert codes == [OK, t.ResultCode.BAD_SIGNATURE]
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 1

    # An old timestamp is a replay too, even with a fresh nonce.
    issued = await kiosk_world.register(_device_id(), load=False)
    body = b'{"last_seq": 0}'  # as _send serialises it
    stale = t.request_headers(
        "heartbeat",
        issued.device.id,
        body,
        secret=(issued.secret or "").encode(),
        timestamp=int((datetime.now(UTC) - timedelta(minutes=10)).timestamp()),
    )
    answer = await _send(
        kiosk_world, issued.device.id, "heartbeat", {"last_seq": 0}, secret=None, headers=stale
    )
    assert answer["code"] == t.ResultCode.BAD_SIGNATURE
    assert (await _device(res, issued.device.id)).last_heartbeat_at is None


async def test_a_cached_device_disabled_is_refused_at_once(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    """The directory keeps a device's key and enabled flag `ttl_s` (PAYGATE_KIOSK_KEY_CACHE_S);
    a disable through this process is seen at once, and one made elsewhere — which only
    `ttl_s` bounds here — still records nothing."""
    kiosk.install()
    dev = _device_id()
    await kiosk_world.register(dev, load=False)
    here = devices.DeviceDirectory(res.engine, ttl_s=60)
    assert (await here.get(dev)) is not None
    async with res.sessions() as s:
        await devices.set_enabled(s, dev, enabled=False, actor=ADMIN)
        await s.commit()
    entry = await here.get(dev)
    assert entry is not None
    assert not entry.enabled

    async with res.sessions() as s:
        await devices.set_enabled(s, dev, enabled=True, actor=ADMIN)
        await s.commit()
        _, _, bill = await bill_for_test(s)
    cached = devices.DeviceDirectory(res.engine, ttl_s=60)
    assert (await cached.get(dev)) is not None
    # Disabled by another process (its `forget` does not reach this one): the cached entry
    # is stale for up to ttl_s, but the confirmation's own statement refuses the device.
    async with res.engine.begin() as conn:
        await conn.execute(
            text("UPDATE kiosk_devices SET enabled = false WHERE id = :d"), {"d": dev}
        )
    stale = await cached.get(dev)
    assert stale is not None
    assert stale.enabled
    before = await _counts(res)
    confirmation = KioskConfirm(
        payment_code=bill.payment_code,
        reference=f"{secrets.randbelow(10**12):012d}",
        amount=bill.principal_amount,
        paid_at=datetime.now(UTC),
        sequence=1,
        digest=b"d" * 32,
    )
    live = await inbound.handle(kiosk_world.ctx, "kiosk", confirmation, sender=dev)
    uploaded = await inbound.handle(
        kiosk_world.ctx, "kiosk", KioskUpload((confirmation,)), sender=dev
    )
    assert (live.outcome, uploaded.outcome) == (Outcome.UNKNOWN_SENDER, Outcome.UNKNOWN_SENDER)
    assert await _counts(res) == before
    assert (await _device(res, dev)).last_seq == 0
    async with res.sessions() as s:
        assert (await s.get_one(Bill, bill.id)).status == "ISSUED"


async def test_an_sm2_device_pays_and_its_rotated_key_replaces_the_old(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    dev = _device_id()
    await kiosk_world.register(dev, sm2=True)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await kiosk_world.pay(dev, bill.payment_code, method="QR")
    [confirm] = out["confirms"]
    assert (confirm["code"], confirm["signature_ok"]) == (OK, True)
    assert "支付方式：扫码" in confirm["data"]["receipt"]["lines"]

    # Rotated to HMAC: the device's SM2 key no longer verifies; the new secret does.
    async with res.sessions() as s:
        rotated = await devices.rotate(s, dev, actor=ADMIN, sign_alg="HMAC")
        await s.commit()
    assert rotated.secret is not None
    assert rotated.device.key_version == 2
    assert (await kiosk_world.heartbeat(dev))["code"] == t.ResultCode.BAD_SIGNATURE
    await kiosk_world.load(dev, secret=rotated.secret)
    assert (await kiosk_world.heartbeat(dev))["code"] == OK


async def test_heartbeats_and_the_offline_report(res: Resources, kiosk_world: KioskWorld) -> None:
    silent, alive = _device_id(), _device_id()
    await kiosk_world.register(silent)
    await kiosk_world.register(alive, heartbeat_window_s=60)
    assert (await kiosk_world.heartbeat(alive))["code"] == OK
    async with res.sessions() as s:
        offline = [d.id for d in await devices.list_devices(s, offline_only=True)]
        assert offline == [silent]
        # A heartbeat older than the window: offline as well.
        device = await s.get_one(KioskDevice, alive)
        device.last_heartbeat_at = datetime.now(UTC) - timedelta(seconds=61)
        await s.commit()
        offline = sorted(d.id for d in await devices.list_devices(s, offline_only=True))
        assert offline == sorted([silent, alive])


async def test_device_secret_is_encrypted_at_rest(res: Resources, kiosk_world: KioskWorld) -> None:
    issued = await kiosk_world.register(_device_id(), load=False)
    assert issued.secret is not None
    async with res.engine.connect() as conn:
        raw = (
            await conn.execute(
                text("SELECT secret_enc FROM kiosk_devices WHERE id = :d"), {"d": issued.device.id}
            )
        ).scalar_one()
    assert issued.secret.encode() not in bytes(raw)


async def test_an_attempt_of_a_kiosk_is_not_offered_to_payers(
    res: Resources, kiosk_world: KioskWorld
) -> None:
    """The query opened a kiosk attempt; nothing else may: the cashier has no kiosk button,
    and the recovery job asks the acquirer about it by its order id."""
    dev = _device_id()
    await kiosk_world.register(dev)
    async with res.sessions() as s:
        _, _, bill = await bill_for_test(s)
    out = await kiosk_world.pay(dev, bill.payment_code, lost_answer=True)
    from payments.attempts import recover_attempts

    await recover_attempts(kiosk_world.ctx, now=datetime.now(UTC) + timedelta(minutes=4))
    async with res.sessions() as s:
        attempt = await s.get_one(PaymentAttempt, uuid.UUID(out["order_id"]))
        assert (attempt.status, attempt.channel_trade_no) == ("SUCCEEDED", out["acquirer_ref"])
    # The stored confirmation, uploaded later, finds the payment made.
    up = await kiosk_world.upload(dev)
    assert up["uploads"][0]["data"]["results"][0]["disposition"] == "PAID"
    async with res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Receipt)) == 1


async def test_the_registry_over_the_admin_api(client: Any, res: Resources) -> None:
    from kernel.staff import create_staff

    async with res.sessions() as s:
        _, finance = await create_staff(s, name="qian", role="finance")
        _, auditor = await create_staff(s, name="sun", role="auditor")
        await s.commit()
    fin = {"Authorization": f"Bearer {finance}"}
    aud = {"Authorization": f"Bearer {auditor}"}
    body = {
        "device_id": "K-API-1",
        "hall": "政务服务中心",
        "region_code": "330100",
        "acquirer_merchant_id": "898330170110001",
        "acquirer_terminal_id": "K0000002",
        "owner_hall": "政务服务中心",
    }
    assert (await client.post("/v1/kiosks", json=body)).status_code == 401
    assert (await client.post("/v1/kiosks", json=body, headers=aud)).status_code == 403
    made = await client.post("/v1/kiosks", json=body, headers=fin)
    assert made.status_code == 201
    assert len(made.json()["secret"]) == 64
    again = await client.post("/v1/kiosks", json=body, headers=fin)
    assert (again.status_code, again.json()["code"]) == (409, "device_exists")
    bad = await client.post(
        "/v1/kiosks", json=body | {"device_id": "K-2", "sign_alg": "SM2"}, headers=fin
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "public_key_required")
    listed = await client.get("/v1/kiosks?offline=true", headers=aud)
    assert [d["id"] for d in listed.json()] == ["K-API-1"]
    off = await client.post("/v1/kiosks/K-API-1/disable", headers=fin)
    assert off.json()["enabled"] is False
    rotated = await client.post("/v1/kiosks/K-API-1/rotate", json={}, headers=fin)
    assert (rotated.json()["device"]["key_version"], len(rotated.json()["secret"])) == (2, 64)
    assert rotated.json()["secret"] != made.json()["secret"]
    assert (await client.get("/v1/kiosks/gaps", headers=aud)).json() == []
    assert (await client.get("/v1/kiosks/K-NONE", headers=aud)).status_code == 404
