"""The printed fiscal e-note: one A5 landscape page drawn from the signed content."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kernel.pdf import BLACK, GREY, RED, Column, DocItem, Sheet, yuan

__all__ = [
    "NoteView",
    "render_note",
]


@dataclass(frozen=True, slots=True)
class NoteView:
    """What a printed note shows; built from the signed content by the e-note service."""

    name: str
    red: bool
    red_lettered: bool
    code: str
    number: str
    check_code: str
    issued_at: str
    issuer_name: str
    issuer_credit_code: str
    payer_name: str
    payer_id_code: str
    pay_mode: str
    payment_code: str
    items: Sequence[DocItem]
    total_fen: int
    total_capitals: str
    handler: str
    checker: str
    remark: str
    issuer_seal_id: str
    supervisor_seal_id: str
    verify_url: str


def render_note(note: NoteView) -> bytes:
    """A one-page A5 landscape fiscal e-note with seals placeholders and a QR code."""
    ink = RED if note.red else BLACK
    sheet = Sheet(page="A5", landscape=True, title=f"{note.name} {note.code}-{note.number}")
    w = sheet.width
    sheet.qr(10, 8, 24, note.verify_url)
    sheet.text(8, 33, "扫码查验", size=6.5, width=28, align="C", color=GREY)
    sheet.fit_text(38, 12, note.name, width=w - 104, size=15, align="C", color=ink)
    sheet.seal(w / 2, 30, 7.5, "财政部门", "监制章")
    right = w - 62
    for n, (label, value) in enumerate(
        [
            ("票据代码", note.code),
            ("票据号码", note.number),
            ("校验码", note.check_code),
            ("开票日期", note.issued_at[:10]),
        ]
    ):
        sheet.text(right, 9 + n * 5.5, f"{label}：", size=8, color=GREY)
        sheet.text(right + 16, 9 + n * 5.5, value, size=8.5, color=ink)
    y = 42.0
    payer_id = f"（{note.payer_id_code}）" if note.payer_id_code else ""
    sheet.text(10, y, f"交款人：{note.payer_name}{payer_id}", size=8.5)
    sheet.text(w / 2, y, f"缴款码：{note.payment_code}", size=8.5)
    y += 5.5
    sheet.text(10, y, f"交款方式：{note.pay_mode}", size=8.5)
    sheet.text(w / 2, y, f"开票时间：{note.issued_at}", size=8.5)
    y += 7
    columns = [
        Column("项目编码", 30),
        Column("项目名称", 52),
        Column("单位", 14, "C"),
        Column("数量", 16, "R"),
        Column("标准（元）", 30, "R"),
        Column("金额（元）", 32, "R"),
        Column("备注", w - 20 - 174),
    ]
    rows = [
        [i.code, i.name, i.unit, str(i.quantity), yuan(i.standard_fen), yuan(i.amount_fen), ""]
        for i in note.items
    ]
    y = sheet.table(10, y, columns, rows, min_rows=4, color=ink)
    sheet.box(10, y, w - 20, 8, color=ink)
    sheet.fit_text(
        12, y + 2, f"金额合计（大写）：{note.total_capitals}", width=w - 90, size=9, color=ink
    )
    sheet.text(
        w - 75, y + 2, f"（小写）¥{yuan(note.total_fen)}", size=9, width=63, align="R", color=ink
    )
    y += 8
    sheet.box(10, y, w - 20, 12, color=ink)
    sheet.fit_text(12, y + 1.5, f"备注：{note.remark}", width=w - 24, size=8)
    sheet.fit_text(
        12,
        y + 6.5,
        f"收款单位：{note.issuer_name}  统一社会信用代码：{note.issuer_credit_code}",
        width=w - 24,
        size=8,
    )
    y += 15
    sheet.text(10, y, "收款单位（章）", size=8.5)
    sheet.seal(50, y + 10, 10, note.issuer_name[:10] or "收款单位", "财务专用章")
    sheet.text(w / 2 - 10, y, f"复核人：{note.checker}", size=8.5)
    sheet.text(w - 62, y, f"收款人：{note.handler}", size=8.5)
    sheet.text(w / 2 - 10, y + 8, f"印章：{note.issuer_seal_id}", size=6.5, color=GREY)
    sheet.text(w / 2 - 10, y + 12, f"监制章：{note.supervisor_seal_id}", size=6.5, color=GREY)
    if note.red_lettered:
        with sheet.rotated(20, w / 2, sheet.height / 2):
            sheet.text(
                0,
                sheet.height / 2 - 12,
                "已冲红",
                size=60,
                width=w,
                align="C",
                color=(235, 120, 120),
            )
    return sheet.output()
