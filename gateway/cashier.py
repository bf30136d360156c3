"""The citizen cashier (收银台): small server-rendered pages, no JavaScript framework.

GET  /pay                     a form: enter the payment code (also `?code=` → redirect)
GET  /pay/{code}              the bill (the URL printed in bill QR codes), pay buttons; with
                              `?attempt=<id>`: that attempt's QR / redirect / instructions,
                              refreshed until paid; once paid, the fiscal e-note links
POST /pay/{code}              start an attempt (same service as the citizen API), then
                              redirect (page/wap: to the channel; otherwise back here)
POST /pay/{code}/notes        the paid bill's e-notes for whoever gives the payer's name

A paid bill's notes carry the payer's full name, so the page shows them only to the flow
that paid (its `?attempt=`) or after the payer's name is given (gateway.enotes.payer_notes).

Thin like every controller: the summary comes from the citizen API's `bill_summary` (same
rate limit, check digit before any lookup), attempts from `payments.attempts`, notes from
`enotes`. Texts are Chinese; comments English.
"""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect

from channels.base import PayMode
from enotes import service as enotes
from gateway.bills_api import pay_url, qr_svg
from gateway.enotes import payer_notes
from gateway.pay_api import BillSummary, bill_summary, bill_summary_and_agency, start_attempt
from gateway.state import Resources
from kernel.errors import DomainError, InvalidInput, NotFound
from kernel.pdf import yuan
from payments import attempts, ways

REFRESH_S = 3
"""How often a waiting page reloads itself (meta refresh) to pick up the payment."""

_STATUS = {
    "ISSUED": "待缴款",
    "PAID": "已缴款",
    "SETTLED": "已缴款（已入库）",
    "PARTIALLY_REFUNDED": "已缴款（部分退付）",
    "CANCELLED": "已撤销",
    "EXPIRED": "已过期",
    "REFUNDED": "已退付",
}
_REFUSAL = {
    "bill_cancelled": "该缴款通知已被执收单位撤销，无需缴款。",
    "bill_expired": "该缴款通知已过期，请联系执收单位。",
    "bill_past_deadline": "已超过缴款截止时间，无法缴款。",
    "bill_not_payable": "该缴款通知当前不可缴款。",
}
_ERRORS = {
    "payment_code_check_failed": "缴款码校验未通过，请核对后重新输入（可能有数字输错或顺序颠倒）。",
    "payment_code_malformed": "缴款码为 20 位数字，请核对后重新输入。",
    "bill_not_found": "未找到该缴款码对应的缴款通知，请核对后重新输入。",
    "rate_limited": "查询过于频繁，请稍后再试。",
    "too_many_failures": "核对失败次数过多，请稍后再试。",
    "channel_unavailable": "支付渠道暂时不可用，未发生扣款，请稍后重试。",
    "unsupported_mode": "不支持该支付方式。",
    "unknown_channel": "不支持该支付渠道。",
}
# Presentation only: how a channel / mode is named on the button.
_CHANNEL_LABELS = {"alipay": "支付宝"}
_MODE_LABELS = {"qr": "扫码支付", "page": "电脑网页支付", "wap": "手机网页支付"}
_ATTEMPT_STATUS = {
    "CREATED": "正在创建",
    "PENDING": "等待付款",
    "UNKNOWN": "正在确认",
    "SUCCEEDED": "支付成功",
    "FAILED": "支付失败",
    "CLOSED": "已关闭（超时未付款）",
}
_WAITING = frozenset({"CREATED", "PENDING", "UNKNOWN"})
_PAID = frozenset({"PAID", "SETTLED", "PARTIALLY_REFUNDED", "REFUNDED"})

_STYLE = """
body{font-family:system-ui,"PingFang SC","Microsoft YaHei",sans-serif;max-width:36rem;
margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}table{border-collapse:collapse;width:100%}
td,th{padding:.35rem .4rem;border-bottom:1px solid #ddd;text-align:left}
td.num,th.num{text-align:right}.due{font-size:1.6rem;color:#c00}
.err{background:#fee;border:1px solid #c00;padding:.6rem}.ok{background:#efe;
border:1px solid #080;padding:.6rem}.box{border:1px solid #ccc;padding:.8rem;margin:1rem 0}
button{font-size:1rem;padding:.5rem 1rem;margin:.2rem}svg{width:14rem;height:14rem}
"""


def _money(fen: int) -> str:
    return f"¥{yuan(fen)}"


def _page(title: str, body: str, *, refresh: str | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S};url={refresh}">' if refresh else ""
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _html(page: str, status: int = 200) -> Response[str]:
    return Response(page, media_type=MediaType.HTML, status_code=status)


def _form(value: str = "") -> str:
    return (
        '<form method="get" action="/pay" class="box">'
        '<label>缴款码 <input name="code" inputmode="numeric" maxlength="24" size="24" '
        f'value="{html.escape(value)}" required></label> '
        '<button type="submit">查询</button></form>'
    )


def _error_page(error: DomainError, code: str = "") -> Response[str]:
    text = _ERRORS.get(error.code, "请求未能完成，请稍后再试。")
    body = f'<h1>非税缴款</h1><p class="err">{html.escape(text)}</p>{_form(code)}'
    return _html(_page("非税缴款", body), status=error.status)


def _summary_html(s: BillSummary) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(i.name)}</td><td class=num>{i.quantity}</td>"
        f"<td class=num>{_money(i.unit_amount)}</td><td class=num>{_money(i.amount)}</td></tr>"
        for i in s.items
    )
    late = (
        f"<tr><th>滞纳金（逾期 {s.overdue_days} 天）</th><td>{_money(s.late_fee)}</td></tr>"
        if s.late_fee
        else ""
    )
    return (
        f"<h1>{html.escape(s.agency_name)}</h1>"
        "<table>"
        f"<tr><th>缴款码</th><td>{html.escape(s.payment_code)}</td></tr>"
        f"<tr><th>缴款人</th><td>{html.escape(s.payer_name)}</td></tr>"
        f"<tr><th>缴款期限</th><td>{s.due_date.isoformat()}</td></tr>"
        f"<tr><th>状态</th><td>{html.escape(_STATUS.get(s.status, s.status))}</td></tr>"
        f"<tr><th>本金</th><td>{_money(s.principal)}</td></tr>{late}"
        "</table>"
        "<h2>缴款项目</h2><table><tr><th>项目</th><th class=num>数量</th>"
        f"<th class=num>单价</th><th class=num>金额</th></tr>{rows}</table>"
        f'<p>今日应缴 <span class="due">{_money(s.amount_due)}</span></p>'
    )


def _channel_label(name: str) -> str:
    if name in _CHANNEL_LABELS:
        return _CHANNEL_LABELS[name]
    if name.startswith("bank:"):
        return f"银行（{name.removeprefix('bank:')}）"
    return name


def _buttons(resources: Resources, code: str, offered: ways.PayWays, *, other: bool) -> str:
    """A button per mode of each channel a payment can be started on here (configured,
    and for a bank: registered and enabled)."""
    forms = []
    for name in offered.channels:
        if name not in resources.channels:
            continue
        adapter = resources.channels.get(name)
        modes: tuple[str, ...] = getattr(adapter, "modes", ()) or ("default",)
        for mode in modes:
            label = _channel_label(name)
            if mode in _MODE_LABELS:
                label += " " + _MODE_LABELS[mode]
            forms.append(
                f'<form method="post" action="/pay/{html.escape(code)}" style="display:inline">'
                f'<input type="hidden" name="channel" value="{html.escape(name)}">'
                f'<input type="hidden" name="mode" value="{html.escape(mode)}">'
                f'<button type="submit">{html.escape(label)}</button></form>'
            )
    if not forms:
        return ""
    # While an attempt waits, the payer may still switch: a second payment is refunded.
    prompt = "未完成支付？可更换支付方式：" if other else "选择支付方式："
    return f'<div class="box"><p>{prompt}</p>' + "".join(forms) + "</div>"


def _elsewhere(offered: ways.PayWays, code: str, agency_name: str) -> str:
    """Where else the code can be paid: only the places that exist (banks registered and
    enabled, kiosks with a device, the agency's counter with a card terminal)."""
    if not offered.modes:
        return (
            f'<p class="err">目前暂无可用的缴款渠道，请联系{html.escape(agency_name)}办理缴款。</p>'
        )
    items = []
    if offered.banks:
        names = "、".join(html.escape(b.name) for b in offered.banks)
        bank_ways = "、".join(ways.LABELS[m] for m in ways.BANK_MODES)
        items.append(
            f"<li>{bank_ways}：在{names}使用缴款码 <strong>{html.escape(code)}</strong> 缴款。</li>"
        )
    if PayMode.KIOSK in offered.modes:
        items.append(
            "<li>自助终端：在设有缴款自助终端的服务大厅，扫描缴款通知书上的二维码或输入缴款码缴款。</li>"
        )
    if PayMode.POS in offered.modes:
        items.append(f"<li>执收单位柜台：到{html.escape(agency_name)}柜台刷银行卡缴款。</li>")
    if not items:
        return ""
    return '<div class="box"><p>也可以通过以下方式缴款：</p><ul>' + "".join(items) + "</ul></div>"


def _inline_svg(data: str) -> str:
    svg = qr_svg(data).decode()
    return re.sub(r"^<\?xml[^>]*>\s*", "", svg)


def _attempt_html(view: attempts.AttemptView, code: str) -> str:
    status = _ATTEMPT_STATUS.get(view.status, view.status)
    parts = [f'<div class="box"><p>{_channel_label(view.channel)}：{html.escape(status)}</p>']
    if view.status in _WAITING:
        payload = view.client_payload
        if payload.get("qr_content"):
            qr = str(payload["qr_content"])
            parts.append(
                f"<p>请使用{_channel_label(view.channel)}扫描二维码，支付 {_money(view.amount)}</p>"
                f"{_inline_svg(qr)}"
                f'<p><small>演示环境可直接打开：<a href="{html.escape(qr)}">{html.escape(qr)}</a>'
                "</small></p>"
            )
        elif payload.get("redirect_url"):
            parts.append(
                f'<p><a href="{html.escape(str(payload["redirect_url"]))}">前往支付页面</a></p>'
            )
        elif payload.get("instructions"):
            parts.append(
                f"<p>请在{_channel_label(view.channel)}的手机银行、网上银行或柜台，"
                f"使用缴款码 <strong>{html.escape(code)}</strong> 缴纳 {_money(view.amount)}。</p>"
            )
        parts.append("<p><small>支付完成后本页将自动刷新。</small></p>")
    parts.append("</div>")
    return "".join(parts)


def _notes_html(notes: list[enotes.NoteSummary]) -> str:
    if not notes:
        return '<p class="ok">缴款成功。财政电子票据正在开具，请稍候。</p>'
    items = "".join(
        f"<li>{'红字票据' if n.refund_id else '财政电子票据'} {html.escape(n.note_code)}-"
        f"{html.escape(n.note_number)}（{_money(n.total_amount)}）："
        f'<a href="{html.escape(n.urls["pdf_url"])}">下载 PDF</a> · '
        f'<a href="{html.escape(n.urls["verify_url"])}">查验</a></li>'
        for n in notes
    )
    return f'<div class="ok"><p>缴款成功。</p><ul>{items}</ul></div>'


def _name_form(code: str, error: str = "") -> str:
    err = f'<p class="err">{html.escape(error)}</p>' if error else ""
    return (
        f'<div class="ok"><p>缴款成功。</p></div>{err}'
        f'<form method="post" action="/pay/{html.escape(code)}/notes" class="box">'
        "<p>查看财政电子票据，请输入缴款通知书上的缴款人姓名（单位名称）：</p>"
        '<label>缴款人 <input name="payer_name" maxlength="200" autocomplete="name" required>'
        '</label> <button type="submit">查看票据</button></form>'
    )


async def _paid_part(
    resources: Resources,
    request: Request[Any, Any, Any],
    code: str,
    attempt: uuid.UUID | None,
) -> tuple[str, str | None]:
    """A paid bill's notes and the page to reload while they are being issued. The notes
    show the payer's full name: only the flow that paid (its attempt) or someone who gives
    the name sees them, never the payment code alone."""
    if attempt is not None:
        async with resources.sessions() as session:
            try:
                notes = await payer_notes(resources, request, session, code, attempt_id=attempt)
            except DomainError:
                pass
            else:
                return _notes_html(notes), None if notes else f"/pay/{code}?attempt={attempt}"
    return _name_form(code), None


class CashierController(Controller):
    path = "/pay"
    include_in_schema = False

    @get("/", media_type=MediaType.HTML, cache=False)
    async def start(self, code: FromQuery[str | None] = None) -> Response[str] | Redirect:
        if code:
            cleaned = re.sub(r"[\s-]", "", code)
            if cleaned.isdigit():
                return Redirect(f"/pay/{cleaned}", status_code=303)
            return _error_page(InvalidInput("", code="payment_code_malformed"), code)
        body = "<h1>非税缴款</h1><p>请输入缴款通知书上的 20 位缴款码。</p>" + _form()
        return _html(_page("非税缴款", body))

    @get("/{payment_code:str}", media_type=MediaType.HTML, cache=False)
    async def bill(
        self,
        payment_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
        attempt: FromQuery[uuid.UUID | None] = None,
        out_trade_no: FromQuery[str | None] = None,
    ) -> Response[str]:
        # A channel's synchronous return (Alipay page/wap) names our attempt as out_trade_no.
        if attempt is None and out_trade_no:
            try:
                attempt = uuid.UUID(out_trade_no)
            except ValueError:
                attempt = None
        try:
            summary, agency_id = await bill_summary_and_agency(resources, request, payment_code)
        except DomainError as exc:
            return _error_page(exc, payment_code)
        parts = [_summary_html(summary)]
        refresh: str | None = None
        here = f"/pay/{summary.payment_code}"
        if attempt is not None:
            try:
                view = await attempts.get_attempt(resources.payment_context(), attempt)
            except DomainError:
                view = None
            if view is not None and summary.status == "ISSUED":
                parts.append(_attempt_html(view, summary.payment_code))
                if view.status in _WAITING:
                    refresh = f"{here}?attempt={view.id}"
        if summary.status in _PAID:
            paid, refresh = await _paid_part(resources, request, summary.payment_code, attempt)
            parts.append(paid)
        elif summary.payable:
            async with resources.sessions() as session:
                offered = await resources.pay_ways(session, agency_id)
            code = summary.payment_code
            parts.append(_buttons(resources, code, offered, other=refresh is not None))
            parts.append(_elsewhere(offered, code, summary.agency_name))
        else:
            text = _REFUSAL.get(summary.refusal_code or "", "该缴款通知当前不可缴款。")
            parts.append(f'<p class="err">{html.escape(text)}</p>')
        title = f"缴款 {summary.payment_code}"
        return _html(_page(title, "".join(parts), refresh=refresh))

    @post("/{payment_code:str}/notes", media_type=MediaType.HTML, status_code=200)
    async def notes(
        self,
        payment_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[str] | Redirect:
        """The paid bill's notes for someone who gives the payer's name (second factor)."""
        form = await request.form()
        name = str(form.get("payer_name", ""))
        try:
            summary = await bill_summary(resources, request, payment_code)
            if summary.status not in _PAID:
                return Redirect(f"/pay/{summary.payment_code}", status_code=303)
            async with resources.sessions() as session:
                notes = await payer_notes(
                    resources, request, session, payment_code, payer_name=name
                )
        except NotFound:
            body = _name_form(payment_code, "缴款人姓名与缴款通知不符，请核对后重新输入。")
            return _html(_page("非税缴款", body), status=404)
        except DomainError as exc:
            return _error_page(exc, payment_code)
        parts = [_summary_html(summary), _notes_html(notes)]
        return _html(_page(f"缴款 {summary.payment_code}", "".join(parts)))

    @post("/{payment_code:str}", status_code=303)
    async def pay(
        self,
        payment_code: FromPath[str],
        request: Request[Any, Any, Any],
        resources: NamedDependency[Resources],
    ) -> Response[str] | Redirect:
        form = await request.form()
        channel, mode = str(form.get("channel", "")), str(form.get("mode", "default"))
        try:
            view = await start_attempt(
                resources, request, payment_code, channel, mode, pay_url(resources, payment_code)
            )
        except DomainError as exc:
            return _error_page(exc, payment_code)
        redirect_url = view.client_payload.get("redirect_url")
        if redirect_url and view.status in _WAITING:
            return Redirect(str(redirect_url), status_code=303)
        return Redirect(f"/pay/{payment_code}?attempt={view.id}", status_code=303)
