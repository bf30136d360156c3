"""The bill payment notice (缴款通知书): one A4 page with the code and a QR to the pay URL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from kernel.capitals import rmb_capitals
from kernel.clock import SHANGHAI
from kernel.pdf import GREY, RED, Column, DocItem, Sheet, yuan

__all__ = [
    "how_to_pay",
    "render_bill_notice",
]


def how_to_pay(ways: Sequence[str], agency_name: str) -> str:
    """The notice's sentence on how to pay, naming only the ways that are configured."""
    if not ways:
        return f"目前暂无可用的缴款渠道，请在缴款期限内联系{agency_name}办理缴款。"
    listed = ways[0] if len(ways) == 1 else "、".join(ways[:-1]) + "或" + ways[-1]
    return f"请凭缴款码在缴款期限内通过{listed}缴款。"


def render_bill_notice(
    *,
    agency_name: str,
    payer_name: str,
    items: Sequence[DocItem],
    amount_fen: int,
    due_date: date,
    payment_code: str,
    pay_url: str,
    ways: Sequence[str],
    bill_no: str = "",
    issued_on: date | None = None,
    remark: str = "",
) -> bytes:
    """A one-page A4 payment notice (缴款通知书) with a QR code to the citizen pay URL.

    `pay_url` is `{PAYGATE_PUBLIC_URL}/pay/{payment_code}`; amounts are fen. `ways` are
    the configured ways to pay as the payer reads them (payments.ways), in print order.
    """
    sheet = Sheet(page="A4", title=f"缴款通知书 {payment_code}")
    w = sheet.width
    sheet.text(0, 16, f"{agency_name}", size=11, width=w, align="C", color=GREY)
    sheet.text(0, 24, "非税收入缴款通知书", size=20, width=w, align="C")
    sheet.line(20, 36, w - 20, 36, width=0.5)
    y = 42.0
    fields = [
        ("缴款人", payer_name),
        ("通知书编号", bill_no or "—"),
        ("开具日期", (issued_on or datetime.now(SHANGHAI).date()).isoformat()),
        ("缴款期限", f"{due_date.isoformat()} 前"),
    ]
    for label, value in fields:
        sheet.text(22, y, f"{label}：", size=10, color=GREY)
        sheet.text(48, y, value, size=10)
        y += 7
    sheet.box(20, y + 2, w - 90, 20, color=RED, width=0.5)
    sheet.text(24, y + 5, "缴款码", size=10, color=RED)
    spaced = " ".join(payment_code[i : i + 4] for i in range(0, len(payment_code), 4))
    sheet.text(24, y + 11, spaced, size=18, color=RED)
    sheet.qr(w - 62, 40, 40, pay_url)
    sheet.text(w - 66, 82, "扫码缴款", size=9, width=48, align="C", color=GREY)
    y += 28
    columns = [
        Column("项目编码", 34),
        Column("项目名称", 50),
        Column("单位", 14, "C"),
        Column("数量", 16, "R"),
        Column("标准（元）", 28, "R"),
        Column("金额（元）", 28, "R"),
    ]
    rows = [
        [i.code, i.name, i.unit, str(i.quantity), yuan(i.standard_fen), yuan(i.amount_fen)]
        for i in items
    ]
    y = sheet.table(20, y, columns, rows, min_rows=4)
    sheet.box(20, y, w - 40, 8)
    sheet.text(22, y + 2, f"合计（大写）：{rmb_capitals(amount_fen)}", size=10)
    sheet.text(w - 80, y + 2, f"（小写）¥{yuan(amount_fen)}", size=10, width=58, align="R")
    y += 14
    notes = [
        how_to_pay(ways, agency_name),
        "缴款成功后可凭缴款码查询并下载财政电子票据。请勿重复缴款。",
        f"在线缴款：{pay_url}",
    ]
    if remark:
        notes.insert(0, f"备注：{remark}")
    for line in notes:
        sheet.fit_text(22, y, line, width=w - 44, size=9, color=GREY)
        y += 6
    return sheet.output()
