"""The agency bill API over real PostgreSQL and Redis: idempotency, isolation, signing."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pypdfium2
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, text, update

from billing import bills as svc
from billing.models import Bill, BillEvent, BillLine
from billing.payment_code import is_valid
from gateway.bills_api import BillIn
from gateway.state import Resources
from gateway.worker import default_jobs, run_once
from kernel.audit import Actor
from kernel.clock import SHANGHAI
from kernel.models import AuditEntry, OutboxMessage
from kernel.pdf import yuan
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key, resident_id


async def _count(res: Resources, model: type) -> int:
    async with res.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _writes(res: Resources) -> tuple[int, ...]:
    return tuple(
        [await _count(res, m) for m in (Bill, BillLine, BillEvent, OutboxMessage, AuditEntry)]
    )


@pytest.fixture
async def api(res: Resources, client: AsyncTestClient[Litestar]) -> AgencyClient:
    agency = await make_agency_with_key(res)
    return AgencyClient(client, agency.key_id, agency.secret)


async def test_create_returns_bill_with_valid_code_and_full_payer_id(
    res: Resources, api: AgencyClient
) -> None:
    body = bill_body("JJ-001", quantity=2, unit_amount=15_000)
    resp = await api.post("/v1/bills", json=body)
    assert resp.status_code == 201, resp.text
    bill = resp.json()
    assert bill["status"] == "ISSUED"
    assert bill["principal_amount"] == 30_000
    assert bill["lines"] == [
        {
            "line_no": 1,
            "item_code": "FINE-ROAD-TRAFFIC",
            "quantity": 2,
            "unit_amount": 15_000,
            "amount": 30_000,
        }
    ]
    code = bill["payment_code"]
    assert is_valid(code)
    assert code[:6] == "330100"
    assert code[8:10] == "01"  # FINE
    assert bill["payer"]["id_number"] == body["payer"]["id_number"]  # owner sees it in full
    assert bill["amount_due_today"]["total"] == 30_000
    assert bill["payable"] is True
    assert bill["pay_url"].endswith(f"/pay/{code}")
    got = await api.get(f"/v1/bills/{bill['id']}")
    assert got.status_code == 200
    assert got.json() == bill
    # At rest the ID number is encrypted, and it is searchable only through the keyed hash.
    async with res.sessions() as s:
        row = (await s.scalars(select(Bill))).one()
    assert row.payer_id_enc is not None
    assert body["payer"]["id_number"].encode() not in row.payer_id_enc
    assert row.payer_id_hash is not None
    events = await _count(res, BillEvent)
    assert events == 1  # issuance is recorded as the first transition


async def test_same_number_same_body_is_idempotent_different_body_is_409(
    res: Resources, api: AgencyClient
) -> None:
    body = bill_body("JJ-002")
    first = await api.post("/v1/bills", json=body)
    assert first.status_code == 201
    again = await api.post("/v1/bills", json=body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["payment_code"] == first.json()["payment_code"]
    before = await _writes(res)
    changed = {**body, "lines": [{**body["lines"][0], "unit_amount": 30_000}]}
    conflict = await api.post("/v1/bills", json=changed)
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "bill_no_reused"
    assert await _writes(res) == before


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (12.5, "validation_failed"),
        (200.0, "validation_failed"),
        ("20000", "validation_failed"),
        (0, "validation_failed"),
        (-100, "validation_failed"),
        (10**12 + 1, "validation_failed"),
        (10**20, "validation_failed"),
    ],
)
async def test_bad_amounts_are_422_and_write_nothing(
    res: Resources, api: AgencyClient, amount: object, code: str
) -> None:
    before = await _writes(res)
    resp = await api.post("/v1/bills", json=bill_body(unit_amount=amount))
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == code
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert await _writes(res) == before


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"unit_amount": 5_000, "item": "EXAM-ACCT-JUNIOR"}, "amount_not_standard"),
        ({"unit_amount": 1_000}, "amount_out_of_item_range"),
        ({"item": "FINE-HIGHWAY"}, "item_not_allowed"),
        ({"payer_id": "330102199001011230"}, "payer_id_invalid"),
        ({"expires_in_days": -1, "due_in_days": -5}, "expires_at_past"),
        ({"due_in_days": 90}, "due_after_expiry"),
    ],
)
async def test_business_rules_are_422(
    res: Resources, api: AgencyClient, change: dict[str, object], code: str
) -> None:
    before = await _writes(res)
    resp = await api.post("/v1/bills", json=bill_body(**change))  # type: ignore[arg-type]
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == code
    assert await _writes(res) == before


async def test_another_agencys_bill_is_404(
    res: Resources, client: AsyncTestClient[Litestar], api: AgencyClient
) -> None:
    bill = (await api.post("/v1/bills", json=bill_body("SHARED-NO"))).json()
    other = await make_agency_with_key(res, region_code="330200")
    spy = AgencyClient(client, other.key_id, other.secret)
    for method, path in [
        ("GET", f"/v1/bills/{bill['id']}"),
        ("GET", f"/v1/bills/{bill['id']}/qr.png"),
        ("POST", f"/v1/bills/{bill['id']}/cancel"),
    ]:
        resp = await spy.request(method, path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["code"] == "bill_not_found"
    listing = await spy.get("/v1/bills", params={"agency_bill_no": "SHARED-NO"})
    assert listing.json()["items"] == []
    # The same bill number is free for the other agency: numbers are unique per agency.
    mine = await spy.post("/v1/bills", json=bill_body("SHARED-NO"))
    assert mine.status_code == 201
    assert mine.json()["id"] != bill["id"]
    assert (await api.get(f"/v1/bills/{bill['id']}")).json()["status"] == "ISSUED"


async def test_signature_failures_are_401_and_write_nothing(
    res: Resources, api: AgencyClient
) -> None:
    before = await _writes(res)
    body = bill_body("AUTH-1")
    cases = [
        ({"secret": "sk_wrong"}, "auth_signature"),
        ({"ts": int(time.time()) - 310}, "auth_stale"),
        ({"ts": int(time.time()) + 310}, "auth_stale"),
    ]
    for kw, code in cases:
        resp = await api.post("/v1/bills", json=body, nonce="n-" + uuid.uuid4().hex, **kw)  # type: ignore[arg-type]
        assert resp.status_code == 401, resp.text
        assert resp.json()["code"] == code
    unsigned = await api.client.post("/v1/bills", json=body)
    assert unsigned.status_code == 401
    assert unsigned.json()["code"] == "auth_missing"
    unknown = AgencyClient(api.client, "pk_nobody", "whatever")
    assert (await unknown.post("/v1/bills", json=body)).json()["code"] == "auth_key"
    # A body changed after signing does not verify.
    from gateway.auth import authorization_header

    signed = authorization_header(
        api.key_id, api.secret, method="POST", path="/v1/bills", query="", body=b'{"a": 1}'
    )
    tampered = await api.client.post(
        "/v1/bills",
        content=b'{"a": 2}',
        headers={"authorization": signed, "content-type": "application/json"},
    )
    assert tampered.status_code == 401
    assert tampered.json()["code"] == "auth_signature"
    assert await _writes(res) == before
    assert await res.redis.dbsize() == 0  # no rejected request left a nonce behind


async def test_replayed_nonce_is_rejected(res: Resources, api: AgencyClient) -> None:
    nonce = "replay-" + uuid.uuid4().hex
    first = await api.post("/v1/bills", json=bill_body("R-1"), nonce=nonce)
    assert first.status_code == 201
    before = await _writes(res)
    replay = await api.post("/v1/bills", json=bill_body("R-2"), nonce=nonce)
    assert replay.status_code == 401
    assert replay.json()["code"] == "auth_replay"
    assert await _writes(res) == before
    # A failed signature does not burn a nonce: the legitimate request still goes through.
    fresh = "fresh-" + uuid.uuid4().hex
    bad = await api.post("/v1/bills", json=bill_body("R-3"), nonce=fresh, secret="nope")
    assert bad.status_code == 401
    ok = await api.post("/v1/bills", json=bill_body("R-3"), nonce=fresh)
    assert ok.status_code == 201


async def test_query_string_is_signed(api: AgencyClient) -> None:
    await api.post("/v1/bills", json=bill_body("Q-1"))
    resp = await api.get("/v1/bills", params={"agency_bill_no": "Q-1"})
    assert resp.status_code == 200
    assert len(resp.json()["items"]) == 1
    # Same signature, different query: rejected.
    auth = resp.request.headers["authorization"].replace("nonce=", "nonce=x")
    forged = await api.client.get("/v1/bills?agency_bill_no=OTHER", headers={"authorization": auth})
    assert forged.status_code == 401


async def test_batch_is_idempotent_per_bill(res: Resources, api: AgencyClient) -> None:
    bills = [bill_body(f"BATCH-{i}") for i in range(5)]
    bills.append(bill_body("BATCH-BAD", unit_amount=1))  # below the fine's minimum
    bills.append(bills[0])  # repeated in the same batch: same answer
    resp = await api.post("/v1/bills:batch", json={"bills": bills})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["created"], out["existing"], out["failed"]) == (5, 1, 1)
    results = out["results"]
    assert [r["outcome"] for r in results] == ["created"] * 5 + ["invalid", "existing"]
    assert results[5]["error"]["code"] == "amount_out_of_item_range"
    assert results[6]["bill_id"] == results[0]["bill_id"]
    codes = [r["payment_code"] for r in results[:5]]
    assert len(set(codes)) == 5
    assert all(is_valid(c) for c in codes)
    assert await _count(res, Bill) == 5
    assert await _count(res, BillLine) == 5

    changed = [*bills[:2], {**bills[2], "remark": "changed"}]
    again = (await api.post("/v1/bills:batch", json={"bills": changed})).json()
    assert [r["outcome"] for r in again["results"]] == ["existing", "existing", "conflict"]
    assert again["results"][0]["payment_code"] == codes[0]
    assert again["results"][2]["error"]["code"] == "bill_no_reused"
    assert await _count(res, Bill) == 5


async def test_batch_rejects_more_than_10000(api: AgencyClient) -> None:
    one = bill_body("X")
    resp = await api.post("/v1/bills:batch", json={"bills": [one] * 10_001})
    assert resp.status_code == 422


async def test_cancel_records_event_webhook_and_refuses_twice(
    res: Resources, api: AgencyClient
) -> None:
    bill = (await api.post("/v1/bills", json=bill_body("C-1"))).json()
    resp = await api.post(f"/v1/bills/{bill['id']}/cancel", json={"reason": "开错了"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "CANCELLED"
    assert resp.json()["payable"] is False
    async with res.sessions() as s:
        events = list(
            await s.scalars(select(BillEvent).where(BillEvent.bill_id == uuid.UUID(bill["id"])))
        )
        hooks = list(await s.scalars(select(OutboxMessage)))
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, "ISSUED"),
        ("ISSUED", "CANCELLED"),
    ]
    assert events[1].actor_type == "agency"
    assert events[1].reason == "开错了"
    assert len(hooks) == 1
    assert hooks[0].topic == "webhook.event"
    assert hooks[0].payload["event"] == "bill.cancelled"
    assert hooks[0].payload["bill_id"] == bill["id"]
    before = await _writes(res)
    again = await api.post(f"/v1/bills/{bill['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "illegal_transition"
    assert await _writes(res) == before


async def test_paid_bill_cannot_be_cancelled(res: Resources, api: AgencyClient) -> None:
    bill = (await api.post("/v1/bills", json=bill_body("P-1"))).json()
    async with res.sessions() as s:
        await s.execute(update(Bill).values(status="PAID", paid_amount=20_000))
        await s.commit()
    resp = await api.post(f"/v1/bills/{bill['id']}/cancel")
    assert resp.status_code == 409
    assert (await api.get(f"/v1/bills/{bill['id']}")).json()["status"] == "PAID"


async def test_expiry_job_expires_set_based_with_events_and_webhooks(
    res: Resources, api: AgencyClient
) -> None:
    old = [(await api.post("/v1/bills", json=bill_body(f"E-{i}"))).json() for i in range(3)]
    keep = (await api.post("/v1/bills", json=bill_body("E-keep"))).json()
    async with res.sessions() as s:
        await s.execute(
            update(Bill)
            .where(Bill.id.in_([uuid.UUID(b["id"]) for b in old]))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1), due_date=Bill.due_date)
        )
        await s.commit()
    handled = await run_once(res, [j for j in default_jobs() if j.name == "bills.expire"])
    assert handled == {"bills.expire": 3}
    for b in old:
        assert (await api.get(f"/v1/bills/{b['id']}")).json()["status"] == "EXPIRED"
    assert (await api.get(f"/v1/bills/{keep['id']}")).json()["status"] == "ISSUED"
    async with res.sessions() as s:
        hooks = list(await s.scalars(select(OutboxMessage)))
        expired_events = await s.scalar(
            select(func.count()).where(BillEvent.to_status == "EXPIRED")
        )
    assert sorted(h.payload["bill_id"] for h in hooks) == sorted(b["id"] for b in old)
    assert {h.payload["event"] for h in hooks} == {"bill.expired"}
    assert expired_events == 3
    assert await run_once(res, [j for j in default_jobs() if j.name == "bills.expire"]) == {
        "bills.expire": 0
    }


async def test_overdue_fine_shows_late_fee_and_exam_fee_does_not(api: AgencyClient) -> None:
    fine = (await api.post("/v1/bills", json=bill_body("LF-1", due_in_days=-10))).json()
    due = fine["amount_due_today"]
    assert (due["overdue_days"], due["late_fee"], due["total"]) == (10, 6_000, 26_000)
    exam = (
        await api.post(
            "/v1/bills",
            json=bill_body("LF-2", item="EXAM-ACCT-JUNIOR", unit_amount=6_000, due_in_days=-10),
        )
    ).json()
    assert exam["amount_due_today"]["late_fee"] == 0
    assert exam["payment_code"][8:10] == "02"


async def test_list_paginates_filters_and_searches_by_payer_id(api: AgencyClient) -> None:
    someone = resident_id("11010519491231002")
    for i in range(7):
        await api.post(
            "/v1/bills",
            json=bill_body(f"L-{i}", payer_id=someone if i % 3 == 0 else None),
        )
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/bills", params=params)).json()
        seen += [b["agency_bill_no"] for b in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == [f"L-{i}" for i in range(7)]
    assert len(seen) == len(set(seen))
    # An ID number is searched for in a body, never in a URL (proxies log URLs).
    in_url = await api.get("/v1/bills", params={"payer_id": someone})
    assert (in_url.status_code, in_url.json()["code"]) == (422, "payer_id_in_url")
    found = (await api.post("/v1/bills/search", json={"payer_id": someone})).json()["items"]
    assert sorted(b["agency_bill_no"] for b in found) == ["L-0", "L-3", "L-6"]
    paged = await api.post("/v1/bills/search", json={"payer_id": someone, "limit": 2})
    assert len(paged.json()["items"]) == 2
    assert paged.json()["next_cursor"]
    assert (await api.get("/v1/bills", params={"status": "PAID"})).json()["items"] == []
    bad = await api.get("/v1/bills", params={"cursor": "!!!"})
    assert bad.status_code == 422


async def test_csv_export_streams_with_masked_ids(api: AgencyClient) -> None:
    pid = resident_id()
    for i in range(3):
        await api.post("/v1/bills", json=bill_body(f"CSV-{i}", payer_id=pid))
    resp = await api.get("/v1/bills", headers={"accept": "text/csv"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert sorted(r["agency_bill_no"] for r in rows) == ["CSV-0", "CSV-1", "CSV-2"]
    assert all(r["payer_id_number"] == pid[:4] + "*" * 10 + pid[-4:] for r in rows)
    assert pid not in resp.text


async def test_qr_codes(api: AgencyClient) -> None:
    bill = (await api.post("/v1/bills", json=bill_body("QR-1"))).json()
    png = await api.get(f"/v1/bills/{bill['id']}/qr.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = await api.get(f"/v1/bills/{bill['id']}/qr.svg")
    assert svg.status_code == 200
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content


async def test_nothing_leaks_payer_id_into_logs(
    api: AgencyClient, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = resident_id("44030619800808777")
    await api.post("/v1/bills", json=bill_body("LOG-1", payer_id=pid))
    await api.post("/v1/bills/search", json={"payer_id": pid})
    await api.post("/v1/bills", json=bill_body("LOG-2", payer_id=pid, unit_amount=1))
    err = capsys.readouterr().err
    assert pid not in err


async def test_auth_nonce_table_is_created_and_purged(res: Resources) -> None:
    async with res.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO auth_nonces (key_id, nonce, expires_at)"
                " VALUES ('k', 'old', now() - interval '1 minute'),"
                " ('k', 'new', now() + interval '5 minutes')"
            )
        )
    await run_once(res, [j for j in default_jobs() if j.name == "auth.purge_nonces"])
    async with res.engine.connect() as conn:
        left = (await conn.execute(text("SELECT nonce FROM auth_nonces"))).scalars().all()
    assert left == ["new"]


def test_fast_keyed_hash_matches_the_keyring() -> None:
    from billing.bills import payer_id_hash
    from kernel.crypto import keyring

    pid = resident_id()
    assert payer_id_hash(pid) == keyring().keyed_hash(pid, purpose=b"payer_id")


async def test_lookup_by_payment_code_checks_the_digit_first(api: AgencyClient) -> None:
    bill = (await api.post("/v1/bills", json=bill_body("PC-1"))).json()
    code = bill["payment_code"]
    found = (await api.get("/v1/bills", params={"payment_code": code})).json()["items"]
    assert [b["id"] for b in found] == [bill["id"]]
    typo = code[:-1] + str((int(code[-1]) + 1) % 10)
    resp = await api.get("/v1/bills", params={"payment_code": typo})
    assert resp.status_code == 422
    assert resp.json()["code"] == "payment_code_check_failed"


async def test_concurrent_creates_of_one_number_make_one_bill(res: Resources) -> None:
    agency = await make_agency_with_key(res)
    cfg = svc.BillingConfig(serial_key=res.settings.billing.serial_key)
    new = msgspec.convert(bill_body("RACE-1"), BillIn).to_domain()

    async def one() -> tuple[uuid.UUID, bool]:
        async with res.sessions() as s:
            out = await svc.issue_bill(
                s, agency.agency_id, new, config=cfg, actor=Actor("agency", "t")
            )
            await asyncio.sleep(0.05)  # hold the transaction open so the two overlap
            await s.commit()
            return out

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert len({bid for bid, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert await _count(res, Bill) == 1


@pytest.mark.parametrize("naive", [False, True])
async def test_list_by_issue_time(api: AgencyClient, naive: bool) -> None:
    await api.post("/v1/bills", json=bill_body("IT-1"))
    past = datetime.now(UTC) - timedelta(hours=1)
    future = datetime.now(UTC) + timedelta(hours=1)

    def fmt(d: datetime) -> str:  # naive times are read as Asia/Shanghai business time
        return d.astimezone(SHANGHAI).replace(tzinfo=None).isoformat() if naive else d.isoformat()

    hit = await api.get("/v1/bills", params={"issued_from": fmt(past), "issued_to": fmt(future)})
    assert hit.status_code == 200, hit.text
    assert [b["agency_bill_no"] for b in hit.json()["items"]] == ["IT-1"]
    miss = await api.get("/v1/bills", params={"issued_from": fmt(future)})
    assert miss.json()["items"] == []
    utc_wall_clock = (datetime.now(UTC) + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    # Read as Shanghai time, five minutes ahead in UTC wall-clock is ~8 h in the past.
    earlier = await api.get("/v1/bills", params={"issued_from": utc_wall_clock})
    assert len(earlier.json()["items"]) == 1


async def test_late_fee_grace_days_come_from_settings(res: Resources, api: AgencyClient) -> None:
    import dataclasses

    from gateway.app import create_app

    bill = (await api.post("/v1/bills", json=bill_body("G-1", due_in_days=-3))).json()
    assert bill["amount_due_today"]["overdue_days"] == 3
    graced = dataclasses.replace(
        res.settings, billing=dataclasses.replace(res.settings.billing, late_fee_grace_days=2)
    )
    async with AsyncTestClient(app=create_app(graced)) as c:
        again = await AgencyClient(c, api.key_id, api.secret).get(f"/v1/bills/{bill['id']}")
    assert again.json()["amount_due_today"]["overdue_days"] == 1
    assert again.json()["amount_due_today"]["late_fee"] == 600
    # The payment notice states the same amount due today.
    total = again.json()["amount_due_today"]["total"]
    async with AsyncTestClient(app=create_app(graced)) as c:
        notice = await AgencyClient(c, api.key_id, api.secret).get(
            f"/v1/bills/{bill['id']}/notice.pdf"
        )
    document = pypdfium2.PdfDocument(notice.content)
    try:
        text = str(document[0].get_textpage().get_text_range())
    finally:
        document.close()
    assert f"¥{yuan(total)}" in text
    assert f"¥{yuan(bill['amount_due_today']['total'])}" not in text


async def test_find_by_payment_code(res: Resources, api: AgencyClient) -> None:
    from billing.payment_code import check_digit
    from kernel.errors import InvalidInput, NotFound

    bill = (await api.post("/v1/bills", json=bill_body("FC-1"))).json()
    code = bill["payment_code"]
    async with res.sessions() as s:
        assert str((await svc.find_by_payment_code(s, code)).id) == bill["id"]
        with pytest.raises(InvalidInput) as bad:
            await svc.find_by_payment_code(s, code[:-1] + str((int(code[-1]) + 1) % 10))
        assert bad.value.code == "payment_code_check_failed"
        other = code[:10] + "000000001"
        with pytest.raises(NotFound):
            await svc.find_by_payment_code(s, other + check_digit(other))
