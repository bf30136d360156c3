"""The PDF toolkit: a one-page bill notice and a note render with real Chinese text,
a QR code and ink on the page (rasterised by pdfium, checked by pixel statistics)."""

from __future__ import annotations

import io
from datetime import date

import pypdfium2
from PIL import Image

from billing.notice import render_bill_notice
from enotes.document import NoteView, render_note
from kernel.pdf import DocItem, font_path, ink_ratio, pdf_to_png, yuan

ITEMS = [
    DocItem("103050101001-01", "道路交通违法罚款", "次", 1, 20_000, 20_000),
    DocItem("LATE-FEE", "加处罚款", "元", 1, 1_805, 1_805),
]


def _text(pdf: bytes) -> str:
    document = pypdfium2.PdfDocument(pdf)
    try:
        assert len(document) == 1
        return str(document[0].get_textpage().get_text_range())
    finally:
        document.close()


def test_font_is_a_real_cjk_opentype_font() -> None:
    head = font_path().read_bytes()[:4]
    assert head in {b"OTTO", b"\x00\x01\x00\x00"}  # OpenType (CFF) or TrueType
    assert font_path().stat().st_size > 5_000_000  # the full CJK set, not a Latin stub


def test_bill_notice_renders_non_blank_with_chinese_text() -> None:
    pdf = render_bill_notice(
        agency_name="某市公安局交通警察支队",
        payer_name="张三",
        items=ITEMS,
        amount_fen=21_805,
        due_date=date(2026, 12, 6),
        payment_code="33012601000000123457",
        pay_url="http://127.0.0.1:8000/pay/33012601000000123457",
        ways=("支付宝", "手机银行", "网上银行"),
        bill_no="JJ-2026-0001",
    )
    assert pdf.startswith(b"%PDF-")
    text = _text(pdf)
    for expected in ("非税收入缴款通知书", "张三", "贰佰壹拾捌元零伍分", "218.05", "3301 2601"):
        assert expected in text, expected
    png = pdf_to_png(pdf, scale=1.0)
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
        assert abs(width - 595) <= 1
        assert abs(height - 842) <= 1
    assert 0.01 < ink_ratio(png) < 0.5


def test_note_renders_and_a_blank_page_does_not_pass() -> None:
    view = NoteView(
        name="非税收入一般缴款书（电子）（红字）",
        red=True,
        red_lettered=False,
        code="33010326",
        number="0000000002",
        check_code="123456",
        issued_at="2026-11-22 04:31:00",
        issuer_name="某市公安局交通警察支队",
        issuer_credit_code="12330100123456789X",
        payer_name="张三",
        payer_id_code="3301**********1234",
        pay_mode="支付宝",
        payment_code="33012601000000123457",
        items=[
            DocItem(i.code, i.name, i.unit, -i.quantity, i.standard_fen, -i.amount_fen)
            for i in ITEMS
        ],
        total_fen=-21_805,
        total_capitals="负贰佰壹拾捌元零伍分",
        handler="paygate",
        checker="财政电子票据系统",
        remark="冲红 33010326-0000000001",
        issuer_seal_id="SEAL-1",
        supervisor_seal_id="SEAL-FIN-330000",
        verify_url="http://127.0.0.1:8000/enotes/verify?code=33010326&number=0000000002&check=123456",
    )
    pdf = render_note(view)
    text = _text(pdf)
    for expected in (
        "0000000002",
        "负贰佰壹拾捌元零伍分",
        "-218.05",
        "3301**********1234",
        "监制章",
    ):
        assert expected in text, expected
    assert ink_ratio(pdf_to_png(pdf)) > 0.01

    blank = Image.new("RGB", (100, 100), "white")
    buffer = io.BytesIO()
    blank.save(buffer, format="PNG")
    assert ink_ratio(buffer.getvalue()) == 0.0


def test_yuan_formats_fen_without_floats() -> None:
    assert [yuan(v) for v in (0, 5, 12_345, -100, 123_456_789)] == [
        "0.00",
        "0.05",
        "123.45",
        "-1.00",
        "1,234,567.89",
    ]
