"""The simulated kiosk's screen (HTML): enter or scan a payment code, the bill with today's
amount due, pay by card, the slip printed on screen, reprint. Rendering only: the
simulator (`channels.kiosk.simulator`) sends the messages."""

from __future__ import annotations

import urllib.parse
from typing import Any

from channels.kiosk.transforms import ResultCode
from channels.sim_page import esc, page, qr_svg

__all__ = ["bill", "devices", "problem", "slip", "start"]

_REFUSALS = {
    ResultCode.UNKNOWN_CODE: "未找到该缴款码对应的缴款通知，请核对后重新输入。",
    ResultCode.CHECK_FAILED: "缴款码校验未通过，请核对后重新输入。",
    ResultCode.PAST_DEADLINE: "已超过缴款截止时间，无法缴款。",
    ResultCode.CANCELLED: "该缴款通知已被执收单位撤销，无需缴款。",
    ResultCode.ALREADY_PAID: "该缴款通知已缴款，无需重复缴款。",
    ResultCode.CONFLICT: "交易与平台记录冲突，请联系工作人员。",
    ResultCode.AMOUNT_DIFFERS: "金额与应缴金额不符，款项将原路退回。",
    ResultCode.UNKNOWN_SEQ: "没有该流水号的凭证。",
    ResultCode.BAD_SIGNATURE: "终端签名校验失败，请联系工作人员。",
    ResultCode.BAD_REQUEST: "报文格式错误，请联系工作人员。",
    ResultCode.UNKNOWN_DEVICE: "本终端未登记或已停用，请联系工作人员。",
    ResultCode.TRY_LATER: "平台暂时无法处理，请稍后重试。",
}


def _base(device_id: str) -> str:
    return f"/kiosk/{urllib.parse.quote(device_id)}"


def _title(device_id: str) -> str:
    return f"自助缴费终端 Kiosk {device_id}（模拟）"


def _header(device_id: str) -> str:
    return f'<h1>{esc(_title(device_id))}</h1><p><a href="{_base(device_id)}">← 首页 Home</a></p>'


def devices(ids: list[str]) -> bytes:
    items = "".join(f'<li><a href="{_base(d)}">{esc(d)}</a></li>' for d in ids)
    body = f"<ul>{items}</ul>" if items else "<p>没有已装载的终端 (no device loaded).</p>"
    return page("自助缴费终端（模拟）", f"<h1>自助缴费终端 Kiosks（模拟）</h1>{body}")


def start(device_id: str, *, stored: list[int], message: str = "") -> bytes:
    """The idle screen: type or scan a payment code."""
    note = f'<p class="err">{esc(message)}</p>' if message else ""
    upload = ""
    if stored:
        upload = (
            f'<form method="post" action="{_base(device_id)}/upload" class="box">'
            f"<p>{len(stored)} 笔交易待上传 (stored, not yet confirmed): {esc(stored)}</p>"
            '<button type="submit">上传 Upload</button></form>'
        )
    body = (
        f"<h1>{esc(_title(device_id))}</h1>{note}"
        f'<form method="post" action="{_base(device_id)}/query" class="box">'
        '<label for="code">请输入或扫描缴款码 Enter or scan the payment code</label><br>'
        '<input id="code" name="code" autofocus autocomplete="off" size="30" required> '
        '<button type="submit">查询 Look up</button></form>'
        f'<form method="post" action="{_base(device_id)}/reprint" class="box">'
        '<label for="seq">补打凭证 Reprint a slip: 流水号 seq</label> '
        '<input id="seq" name="seq" inputmode="numeric" size="8" required> '
        '<button type="submit">补打 Reprint</button></form>'
        f"{upload}"
    )
    return page(_title(device_id), body)


def problem(device_id: str, answer: dict[str, Any], what: str) -> bytes:
    """A refusal or a failure, as the kiosk tells the payer (no money was taken unless the
    answer says otherwise)."""
    code = str(answer.get("code"))
    text = _REFUSALS.get(code) or str(answer.get("msg") or answer.get("error") or "")
    if answer.get("code") == ResultCode.OK and not answer.get("signature_ok"):
        text = "平台应答签名无效，终端不予采信 (the answer's signature did not verify)."
    body = (
        f"{_header(device_id)}<h2>{esc(what)}</h2>"
        f'<p class="err" role="alert">{esc(text)} <small>（结果码 {esc(code)}）</small></p>'
    )
    return page(_title(device_id), body)


def bill(device_id: str, data: dict[str, Any]) -> bytes:
    """The bill and what is due today, with the pay-by-card button."""
    items = "".join(
        f'<tr><td>{esc(i["name"])}</td><td class="num">¥{esc(i["amount"])}</td></tr>'
        for i in data.get("items", [])
    )
    late = data.get("late_fee", "0.00")
    late_row = (
        f'<tr><td>滞纳金 Late fee</td><td class="num">¥{esc(late)}</td></tr>'
        if late != "0.00"
        else ""
    )
    body = (
        f"{_header(device_id)}<h2>缴款通知 Bill</h2><table>"
        f"<tr><th>执收单位 Agency</th><td>{esc(data['agency_name'])}</td></tr>"
        f"<tr><th>缴款人 Payer</th><td>{esc(data['payer_name'])}</td></tr>"
        f"<tr><th>缴款码 Payment code</th><td>{esc(data['payment_code'])}</td></tr>"
        f"<tr><th>缴款期限 Due</th><td>{esc(data['due_date'])}</td></tr></table>"
        f'<table><tr><th>项目 Item</th><th class="num">金额</th></tr>{items}{late_row}</table>'
        f'<p>今日应缴 Due today <span class="due" id="due">¥{esc(data["amount"])}</span></p>'
        f"<p><small>请在 {esc(data.get('pay_before', ''))} 前完成支付</small></p>"
        f'<form method="post" action="{_base(device_id)}/pay">'
        f'<input type="hidden" name="code" value="{esc(data["payment_code"])}">'
        '<button type="submit" style="font-size:1.3rem">银行卡支付 Pay by card</button></form>'
    )
    return page(_title(device_id), body)


def slip(device_id: str, receipt: dict[str, Any], *, seq: int, disposition: str | None) -> bytes:
    """The slip as printed: the platform's lines as they are, its QR code, and reprint."""
    lines = "\n".join(str(x) for x in receipt.get("lines", []))
    qr = receipt.get("qr") or {}
    qr_html = ""
    if qr.get("content"):
        qr_html = (
            f"<div>{qr_svg(str(qr['content']))}</div>"
            f'<p><small><a href="{esc(qr["content"])}">{esc(qr["content"])}</a></small></p>'
        )
    head = "缴款成功 Paid" if disposition in {None, "PAID"} else "款项将原路退回 Refund"
    if receipt.get("copy") == "REPRINT":
        head = "补打凭证 Reprint"
    body = (
        f'{_header(device_id)}<p class="ok" role="status">{esc(head)}</p>'
        f'<div class="slip" id="slip">{esc(lines)}</div>{qr_html}'
        f'<form method="post" action="{_base(device_id)}/reprint">'
        f'<input type="hidden" name="seq" value="{seq}">'
        '<button type="submit">补打 Reprint</button></form>'
    )
    return page(_title(device_id), body)
