"""A payment code alone never opens a payer's e-notes: the code is checked (Damm digit)
before any lookup, a second factor (the payer's name, or the attempt that paid) is needed,
lookups are rate-limited per client, and failed factors and wrong check codes are throttled
per payment code / per note across all clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from billing.payment_code import check_digit
from enotes.models import ENote
from enotes.service import run_issue_job
from gateway.app import create_app
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from payments.models import Receipt
from tests.enote_helpers import agency_with_items, paid_bill

BUDGET = 4


@pytest.fixture
async def guarded(res: Resources, settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    tight = replace(
        settings, payments=replace(settings.payments, guess_budget=BUDGET, lookup_rate_limit=100)
    )
    async with AsyncTestClient(app=create_app(tight)) as c:
        yield c


async def _issued(
    res: Resources, settings: Settings, n: int = 1
) -> list[tuple[str, ENote, Receipt]]:
    """`n` paid bills of one agency with their note issued: (payment code, note, receipt)."""
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        paid = [await paid_bill(s, agency, [(fine, 1, 20_000)]) for _ in range(n)]
    assert await run_issue_job(res.sessions, enote_context(settings)) == n
    out = []
    async with res.sessions() as s:
        for bill, receipt in paid:
            note = (await s.scalars(select(ENote).where(ENote.bill_id == bill.id))).one()
            out.append((bill.payment_code, note, receipt))
    return out


async def test_a_payment_code_alone_reveals_no_check_code_and_no_name(
    res: Resources, settings: Settings, guarded: AsyncTestClient[Litestar]
) -> None:
    ((code, note, _),) = await _issued(res, settings)
    r = await guarded.get("/v1/enotes/", params={"payment_code": code})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "second_factor_required"
    assert note.check_code not in r.text
    # A name in a URL would land in proxy logs: refused, not ignored.
    r = await guarded.get("/v1/enotes/", params={"payment_code": code, "payer_name": "张三"})
    assert (r.status_code, r.json()["code"]) == (422, "payer_name_in_url")
    assert note.check_code not in r.text


async def test_the_check_digit_is_verified_before_any_lookup(
    res: Resources, guarded: AsyncTestClient[Litestar]
) -> None:
    body = "3301002601000000123"
    wrong = body + str((int(check_digit(body)) + 1) % 10)
    r = await guarded.post("/v1/enotes/lookup", json={"payment_code": wrong, "payer_name": "张三"})
    assert (r.status_code, r.json()["code"]) == (422, "payment_code_check_failed")
    r = await guarded.get("/v1/enotes/", params={"payment_code": "12"})
    assert (r.status_code, r.json()["code"]) == (422, "payment_code_malformed")


async def test_name_or_paid_attempt_opens_the_notes_and_guessing_runs_out(
    res: Resources, settings: Settings, guarded: AsyncTestClient[Litestar]
) -> None:
    (code, note, receipt), (other_code, _, other_receipt) = await _issued(res, settings, 2)

    # Full-width letters, case and spaces are forgiven; the name itself is not.
    r = await guarded.post("/v1/enotes/lookup", json={"payment_code": code, "payer_name": " 张 三"})
    assert r.status_code == 200, r.text
    ((item,),) = [r.json()]
    assert (item["note_number"], item["check_code"]) == (note.note_number, note.check_code)
    r = await guarded.get(
        "/v1/enotes/", params={"payment_code": code, "attempt_id": str(receipt.attempt_id)}
    )
    assert r.status_code == 200
    assert r.json()[0]["check_code"] == note.check_code

    # Another bill's paid attempt proves nothing about this one.
    r = await guarded.get(
        "/v1/enotes/", params={"payment_code": code, "attempt_id": str(other_receipt.attempt_id)}
    )
    assert (r.status_code, r.json()["code"]) == (404, "enote_not_found")
    for guess in ["李四", "王五", "赵六"][: BUDGET - 1]:
        r = await guarded.post(
            "/v1/enotes/lookup", json={"payment_code": code, "payer_name": guess}
        )
        assert (r.status_code, r.json()["code"]) == (404, "enote_not_found")
        assert note.check_code not in r.text
    # The budget is per payment code, for every client together: even the right name waits.
    r = await guarded.post("/v1/enotes/lookup", json={"payment_code": code, "payer_name": "张三"})
    assert (r.status_code, r.json()["code"]) == (429, "too_many_failures")
    assert int(r.headers["retry-after"]) > 0
    # Other bills are not affected.
    r = await guarded.post(
        "/v1/enotes/lookup", json={"payment_code": other_code, "payer_name": "张三"}
    )
    assert r.status_code == 200


async def test_note_lookups_are_rate_limited_per_client(res: Resources, settings: Settings) -> None:
    ((code, _, _),) = await _issued(res, settings)
    tight = replace(settings, payments=replace(settings.payments, lookup_rate_limit=3))
    async with AsyncTestClient(app=create_app(tight)) as c:
        statuses = [
            (
                await c.post("/v1/enotes/lookup", json={"payment_code": code, "payer_name": "张三"})
            ).status_code
            for _ in range(4)
        ]
    assert statuses == [200, 200, 200, 429]


async def test_check_code_guessing_is_throttled_per_note(
    res: Resources, settings: Settings, guarded: AsyncTestClient[Litestar]
) -> None:
    (_, note, _), (_, other, _) = await _issued(res, settings, 2)
    query = {"code": note.note_code, "number": note.note_number}
    wrong = [f"{(int(note.check_code) + k) % 10**6:06d}" for k in range(1, BUDGET + 1)]
    for check in wrong[:2]:
        r = await guarded.get("/v1/enotes/verify", params={**query, "check": check})
        assert r.status_code == 404
    pdf = f"/v1/enotes/{note.note_code}/{note.note_number}.pdf"
    assert (await guarded.get(pdf, params={"check": wrong[2]})).status_code == 404
    page = await guarded.get("/enotes/verify", params={**query, "check": wrong[3]})
    assert page.status_code == 404
    # Out of budget: the right check code is refused too, on every route, until the window ends.
    r = await guarded.get("/v1/enotes/verify", params={**query, "check": note.check_code})
    assert (r.status_code, r.json()["code"]) == (429, "too_many_failures")
    assert (await guarded.get(pdf, params={"check": note.check_code})).status_code == 429
    page = await guarded.get("/enotes/verify", params={**query, "check": note.check_code})
    assert page.status_code == 429
    assert "查验过于频繁" in page.text
    # Another note verifies as usual.
    r = await guarded.get(
        "/v1/enotes/verify",
        params={"code": other.note_code, "number": other.note_number, "check": other.check_code},
    )
    assert r.status_code == 200
    assert r.json()["status"] == "valid"


async def test_verification_is_rate_limited_per_client(res: Resources, settings: Settings) -> None:
    ((_, note, _),) = await _issued(res, settings)
    tight = replace(settings, payments=replace(settings.payments, lookup_rate_limit=2))
    query = {"code": note.note_code, "number": note.note_number, "check": note.check_code}
    async with AsyncTestClient(app=create_app(tight)) as c:
        statuses = [(await c.get("/v1/enotes/verify", params=query)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_cashier_shows_a_paid_bills_notes_only_to_its_payer(
    res: Resources, settings: Settings, guarded: AsyncTestClient[Litestar]
) -> None:
    ((code, note, receipt),) = await _issued(res, settings)
    # Someone with only the code sees that the bill is paid, and no note.
    page = await guarded.get(f"/pay/{code}")
    assert page.status_code == 200
    assert "已缴款" in page.text
    assert note.check_code not in page.text
    assert "下载 PDF" not in page.text
    assert f'action="/pay/{code}/notes"' in page.text
    # The payer's own flow (the attempt that paid) sees the note.
    mine = await guarded.get(f"/pay/{code}", params={"attempt": str(receipt.attempt_id)})
    assert "下载 PDF" in mine.text
    assert re.search(rf"\.pdf\?check={note.check_code}", mine.text)
    # So does whoever gives the payer's name; a wrong name is told so.
    named = await guarded.post(f"/pay/{code}/notes", data={"payer_name": "张三"})
    assert named.status_code == 200
    assert f"check={note.check_code}" in named.text
    wrong = await guarded.post(f"/pay/{code}/notes", data={"payer_name": "李四"})
    assert wrong.status_code == 404
    assert "缴款人姓名与缴款通知不符" in wrong.text
    assert note.check_code not in wrong.text
