"""Public e-note routes: verification (JSON and page), the note as PDF/PNG by code + number +
check code, and the payer's list by payment code and name — through the real app."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text

from enotes.models import ENote
from enotes.service import run_issue_job, run_red_job, seal_content
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from kernel.pdf import ink_ratio, pdf_to_png
from tests.enote_helpers import agency_with_items, paid_bill, succeeded_refund


async def _issue(res: Resources, settings: Settings) -> tuple[str, ENote]:
    async with res.sessions() as s, s.begin():
        agency, fine, fee = await agency_with_items(s)
        bill, _ = await paid_bill(s, agency, [(fine, 1, 12_345), (fee, 1, 10_000)])
    assert await run_issue_job(res.sessions, enote_context(settings)) == 1
    async with res.sessions() as s:
        note = (await s.scalars(select(ENote))).one()
    return bill.payment_code, note


async def test_verify_pdf_png_and_cashier_list(
    client: AsyncTestClient[Litestar], res: Resources, settings: Settings
) -> None:
    payment_code, note = await _issue(res, settings)
    query = {"code": note.note_code, "number": note.note_number, "check": note.check_code}

    r = await client.get("/v1/enotes/verify", params=query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "valid"
    assert body["total_amount"] == 22_345
    assert body["total_capitals"] == "贰佰贰拾叁元肆角伍分"
    assert [s["role"] for s in body["signatures"]] == ["issuer", "supervisor"]
    assert all(s["valid"] and s["algorithm"] == "SM2-SM3" for s in body["signatures"])

    # A wrong check code is indistinguishable from a missing note: no enumeration.
    wrong = {**query, "check": f"{(int(note.check_code) + 1) % 10**6:06d}"}
    r = await client.get("/v1/enotes/verify", params=wrong)
    assert r.status_code == 404
    assert r.json()["code"] == "enote_not_found"
    r = await client.get("/v1/enotes/verify", params={**query, "number": "12"})
    assert r.status_code == 422
    assert r.json()["code"] == "enote_bad_query"

    page = await client.get("/enotes/verify", params=query)
    assert page.status_code == 200
    assert "票据真实有效" in page.text
    assert "贰佰贰拾叁元肆角伍分" in page.text
    missing = await client.get("/enotes/verify", params=wrong)
    assert missing.status_code == 404
    assert "查无此票据" in missing.text

    base = f"/v1/enotes/{note.note_code}/{note.note_number}"
    pdf = await client.get(f"{base}.pdf", params={"check": note.check_code})
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert ink_ratio(pdf_to_png(pdf.content)) > 0.01
    png = await client.get(f"{base}.png", params={"check": note.check_code})
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert ink_ratio(png.content) > 0.01
    assert (await client.get(f"{base}.pdf", params={"check": wrong["check"]})).status_code == 404
    assert (await client.get(f"{base}.txt", params={"check": note.check_code})).status_code == 404

    # The payer's list: the payment code and the payer's name (factories name everyone 张三).
    listed = await client.post(
        "/v1/enotes/lookup", json={"payment_code": payment_code, "payer_name": "张三"}
    )
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()
    assert (item["note_number"], item["check_code"], item["status"]) == (
        note.note_number,
        note.check_code,
        "VALID",
    )
    assert item["pdf_url"].endswith(f"{base}.pdf?check={note.check_code}")

    # Tampering shows as invalid, and an invalid note is not printed — even by someone who
    # holds the data key and re-encrypts the altered content properly.
    forged = seal_content(note.id, note.content.replace(b"12345", b"12346"))
    async with res.sessions() as s, s.begin():
        await s.execute(
            text("UPDATE enotes SET content_enc = :v WHERE id = :id"), {"v": forged, "id": note.id}
        )
    r = await client.get("/v1/enotes/verify", params=query)
    assert r.json()["status"] == "invalid"
    assert "total_amount" not in r.json()
    r = await client.get(f"{base}.pdf", params={"check": note.check_code})
    assert r.status_code == 409
    assert r.json()["code"] == "enote_invalid"
    page = await client.get("/enotes/verify", params=query)
    assert "票据验证失败" in page.text


async def test_red_lettered_note_verifies_as_such(
    client: AsyncTestClient[Litestar], res: Resources, settings: Settings
) -> None:
    _, note = await _issue(res, settings)
    async with res.sessions() as s, s.begin():
        from payments.models import Receipt

        receipt = await s.get(Receipt, note.receipt_id)
        assert receipt is not None
        await succeeded_refund(s, receipt, receipt.amount)
    assert await run_red_job(res.sessions, enote_context(settings)) == 1
    query = {"code": note.note_code, "number": note.note_number, "check": note.check_code}
    body = (await client.get("/v1/enotes/verify", params=query)).json()
    assert body["status"] == "red_lettered"
    page = await client.get("/enotes/verify", params=query)
    assert "已冲红" in page.text
    png = await client.get(
        f"/v1/enotes/{note.note_code}/{note.note_number}.png", params={"check": note.check_code}
    )
    assert png.status_code == 200
    assert ink_ratio(png.content) > 0.01
