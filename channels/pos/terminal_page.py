"""A card terminal's display for a person at the counter (the demo): look a bill up by its
payment code, take the card sale, print the voucher (签购单); void the last sale; settle
the batch.

A plain ASGI app (no framework: it must not share code paths with the service it drives).
Every operation goes through `channels.pos.simulator.SimTerminal`, the same client as
`paygate simulator pos` and the tests, with the same journal file per terminal
(`var/pos-sim/<terminal>.json` unless told otherwise), so the page and the command line
can take turns on one terminal:

    GET  /pos                        the loaded terminals (one: straight to its page)
    GET  /pos/<terminal>             payment code form, the batch so far, void, settle
    POST /pos/<terminal>/inquiry     {code}           → the bill and the amount due
    POST /pos/<terminal>/sale        {code, amount}   → the voucher (amount in yuan)
    POST /pos/<terminal>/void        {trace_no}       → the void's voucher
    POST /pos/<terminal>/settle                       → the settlement report
    GET  /health/live

Given the terminals' simulated acquirer (`channels.pos.simulator_acquirer`), the same
process serves it under its own paths (/card, /acquirer, /control) and the terminals book
every card transaction with it first, as `paygate simulator pos --acquirer` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from channels.money import fen_to_yuan, yuan_to_fen
from channels.pos.simulator import JournalLine, SimTerminal
from channels.sim_asgi import Receive, Scope, Send, lifespan, read_request, respond
from channels.sim_page import HTML, esc, page, parse_form, payment_code_from, redirect

__all__ = ["LoadedTerminal", "TerminalPage", "create_app"]

Answer = tuple[int, bytes, dict[str, str]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CODES = {
    "00": "交易成功 Approved",
    "03": "终端未登记或已停用 Unknown or disabled terminal",
    "12": "当前不允许该交易 Not allowed now",
    "13": "金额不符 Amount differs",
    "25": "原交易不存在 Original unknown",
    "30": "报文格式错误 Format error",
    "57": "该缴款通知不可缴款 Bill cannot be paid",
    "94": "批次号/凭证号已用于其他交易 Numbers used",
    "95": "结算不平 Totals differ",
    "96": "系统错误 System error",
    "A0": "签名校验失败 Signature failed",
    "B1": "缴款码不存在 Unknown payment code",
    "B2": "该缴款通知已缴款 Already paid",
    "B3": "该交易已冲正 Reversed",
}


@dataclass(frozen=True, slots=True)
class LoadedTerminal:
    """A registered terminal the page plays: its ids, its key, where its journal is."""

    merchant: str
    terminal: str
    key: str
    gateway_url: str
    journal: Path
    acquirer_url: str | None = None


class TerminalPage:
    def __init__(self, terminals: list[LoadedTerminal], acquirer: ASGIApp | None = None) -> None:
        self.terminals = {x.terminal: x for x in terminals}
        self._locks = {x.terminal: asyncio.Lock() for x in terminals}
        self.acquirer = acquirer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if self.acquirer is not None and scope["type"] == "http" and path.split("/")[1] != "pos":
            await self.acquirer(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        _, body = await read_request(scope, receive)
        status, out, headers = await self.handle(scope["method"], scope["path"], body)
        await respond(send, status, out, headers, default_type=None)

    async def handle(  # noqa: PLR0911 - one answer per route and failure
        self, method: str, path: str, body: bytes
    ) -> Answer:
        parts = path.strip("/").split("/")
        if path == "/health/live":
            return 200, b'{"status":"ok"}', {"content-type": "application/json"}
        if parts[0] != "pos":
            return 404, b"not found", dict(HTML)
        if len(parts) == 1:
            if len(self.terminals) == 1:
                return redirect(f"/pos/{next(iter(self.terminals))}")
            links = "".join(
                f'<li><a href="/pos/{esc(x)}">{esc(x)}</a></li>' for x in self.terminals
            )
            return 200, page("POS 终端（模拟）", f"<h1>POS 终端（模拟）</h1><ul>{links}</ul>"), HTML
        loaded = self.terminals.get(parts[1])
        if loaded is None:
            return 404, b"unknown terminal", dict(HTML)
        step = parts[2] if len(parts) == 3 else ""
        if method == "GET" and step == "":
            return 200, self._home(loaded, self._terminal(loaded)), dict(HTML)
        if method != "POST":
            return 404, b"not found", dict(HTML)
        form = parse_form(body)
        async with self._locks[loaded.terminal]:  # one transaction at a time, as a terminal
            sim = self._terminal(loaded)
            try:
                out = await self._step(loaded, sim, step, form)
            except httpx.HTTPError as exc:
                out = self._problem(loaded, "通信失败 Link down", "-", type(exc).__name__)
            finally:
                sim.save(loaded.journal)
                await sim.aclose()
        if out is None:
            return 404, b"not found", dict(HTML)
        return 200, out, dict(HTML)

    @staticmethod
    def _terminal(loaded: LoadedTerminal) -> SimTerminal:
        """The terminal with its journal as the file has it now (the command line may have
        used the terminal since)."""
        return SimTerminal(
            gateway_url=loaded.gateway_url,
            merchant=loaded.merchant,
            terminal=loaded.terminal,
            key=loaded.key.encode(),
            state=SimTerminal.load(loaded.journal),
            acquirer_url=loaded.acquirer_url,
        )

    async def _step(
        self, loaded: LoadedTerminal, sim: SimTerminal, step: str, form: dict[str, str]
    ) -> bytes | None:
        steps = {
            "inquiry": self._inquiry,
            "sale": self._sale,
            "void": self._void,
            "settle": self._settle,
        }
        return await steps[step](loaded, sim, form) if step in steps else None

    async def _inquiry(
        self, loaded: LoadedTerminal, sim: SimTerminal, form: dict[str, str]
    ) -> bytes:
        sent = await sim.inquiry(payment_code_from(form.get("code", "")))
        answer = sent.answer or {}
        if answer.get("code") != "00" or not sent.signature_ok:
            return self._refused(loaded, "查询 Inquiry", answer, sent.signature_ok)
        return self._bill(loaded, answer["data"])

    async def _sale(self, loaded: LoadedTerminal, sim: SimTerminal, form: dict[str, str]) -> bytes:
        code = payment_code_from(form.get("code", ""))
        try:
            amount = yuan_to_fen(form.get("amount", ""))
        except ValueError:
            return self._problem(loaded, "消费 Sale", "30", "金额格式：123.45")
        first = (await sim.sale(code, amount))["sale"]
        answer = first.get("answer") or {}
        if answer.get("code") != "00" or not first.get("signature_ok"):
            return self._refused(loaded, "消费 Sale", answer, first.get("signature_ok"))
        return self._voucher(loaded, "消费 SALE", first["request"], answer["data"])

    async def _void(self, loaded: LoadedTerminal, sim: SimTerminal, form: dict[str, str]) -> bytes:
        trace = form.get("trace_no", "")
        try:
            sent = await sim.void(trace)
        except KeyError:
            return self._problem(loaded, "撤销 Void", "25", f"无此凭证号 {trace}")
        answer = sent.answer or {}
        if answer.get("code") != "00" or not sent.signature_ok:
            return self._refused(loaded, "撤销 Void", answer, sent.signature_ok)
        return self._voucher(loaded, "撤销 VOID", sent.request, answer["data"])

    async def _settle(
        self, loaded: LoadedTerminal, sim: SimTerminal, form: dict[str, str]
    ) -> bytes:
        del form
        batch = sim.state.batch_no
        sent = await sim.settle()
        answer = sent.answer or {}
        if answer.get("code") not in {"00", "95"} or not sent.signature_ok:
            return self._refused(loaded, "结算 Settle", answer, sent.signature_ok)
        return self._settled(loaded, batch, sent.request, answer)

    # ------------------------------------------------------------------ pages

    @staticmethod
    def _title(loaded: LoadedTerminal) -> str:
        return f"POS 终端 {loaded.terminal}（模拟）"

    def _frame(self, loaded: LoadedTerminal, body: str) -> bytes:
        home = f'<p><a href="/pos/{esc(loaded.terminal)}">← 首页 Home</a></p>'
        return page(self._title(loaded), f"<h1>{esc(self._title(loaded))}</h1>{home}{body}")

    def _home(self, loaded: LoadedTerminal, sim: SimTerminal) -> bytes:
        lines = [x for x in sim.state.journal if x.batch_no == sim.state.batch_no]
        rows = "".join(
            f"<tr><td>{esc(x.trace_no)}</td><td>{esc(x.kind)}</td><td>{esc(x.payment_code)}</td>"
            f'<td class="num">¥{fen_to_yuan(x.amount)}</td><td>{esc(x.state)}</td></tr>'
            for x in lines
        )
        last = _last_sale(lines)
        void = ""
        if last is not None:
            void = (
                f'<form method="post" action="/pos/{esc(loaded.terminal)}/void" class="box">'
                f'<input type="hidden" name="trace_no" value="{esc(last.trace_no)}">'
                f"上一笔消费 Last sale: 凭证号 {esc(last.trace_no)} ¥{fen_to_yuan(last.amount)} "
                '<button type="submit">撤销 Void last sale</button></form>'
            )
        body = (
            f"<p>商户号 Merchant {esc(loaded.merchant)} · "
            f"批次号 Batch {esc(sim.state.batch_no)}</p>"
            f'<form method="post" action="/pos/{esc(loaded.terminal)}/inquiry" class="box">'
            '<label for="code">缴款码 Payment code</label> '
            '<input id="code" name="code" autofocus autocomplete="off" size="26" required> '
            '<button type="submit">查询 Inquiry</button></form>'
            f"{void}"
            "<h2>本批次交易 This batch</h2>"
            "<table><tr><th>凭证号</th><th>类型</th><th>缴款码</th>"
            f'<th class="num">金额</th><th>状态</th></tr>{rows}</table>'
            f'<form method="post" action="/pos/{esc(loaded.terminal)}/settle">'
            '<button type="submit">结算 Settle batch</button></form>'
        )
        return self._frame(loaded, body)

    def _bill(self, loaded: LoadedTerminal, data: dict[str, Any]) -> bytes:
        items = "".join(
            f'<tr><td>{esc(i["name"])}</td><td class="num">¥{esc(i["amount"])}</td></tr>'
            for i in data.get("items", [])
        )
        body = (
            "<h2>缴款通知 Bill</h2><table>"
            f"<tr><th>执收单位 Agency</th><td>{esc(data['agency_name'])}</td></tr>"
            f"<tr><th>缴款人 Payer</th><td>{esc(data['payer_name'])}</td></tr>"
            f"<tr><th>缴款码 Payment code</th><td>{esc(data['payment_code'])}</td></tr>"
            f"<tr><th>滞纳金 Late fee</th><td>¥{esc(data.get('late_fee', '0.00'))}</td></tr>"
            f'</table><table><tr><th>项目 Item</th><th class="num">金额</th></tr>{items}</table>'
            f'<p>应缴 Due <span class="due" id="due">¥{esc(data["amount"])}</span></p>'
            f'<form method="post" action="/pos/{esc(loaded.terminal)}/sale" class="box">'
            f'<input type="hidden" name="code" value="{esc(data["payment_code"])}">'
            '<label for="amount">刷卡金额 Amount (元)</label> '
            f'<input id="amount" name="amount" value="{esc(data["amount"])}" size="10" required> '
            '<button type="submit">刷卡消费 Card sale</button></form>'
        )
        return self._frame(loaded, body)

    def _voucher(
        self, loaded: LoadedTerminal, kind: str, request: dict[str, Any], data: dict[str, Any]
    ) -> bytes:
        """The voucher as the terminal prints it: its own facts and the host's answer."""
        lines = [
            "POS 签购单 (模拟)",
            f"商户编号 MERCHANT NO: {loaded.merchant}",
            f"终端编号 TERMINAL NO: {loaded.terminal}",
            f"交易类型 TXN TYPE: {kind}",
            f"批次号 BATCH NO: {request['batch_no']}",
            f"凭证号 VOUCHER NO: {request['trace_no']}",
        ]
        if "original_trace_no" in request:
            lines.append(f"原凭证号 ORIG VOUCHER: {request['original_trace_no']}")
        if "card" in request:
            lines.append(f"卡号 CARD NO: {request['card']}")
        if "payment_code" in request:
            lines.append(f"缴款码 PAYMENT CODE: {request['payment_code']}")
        lines += [
            f"参考号 REF NO: {request['rrn']}",
            f"日期时间 DATE/TIME: {request['time']}",
            f"金额 AMOUNT: RMB {request['amount']}",
        ]
        if data.get("receipt_id"):
            lines.append(f"回执号 RECEIPT: {data['receipt_id']}")
        if data.get("bill_status"):
            lines.append(f"缴款状态 BILL: {data['bill_status']}")
        lines.append("持卡人签名 CARDHOLDER SIGNATURE: ____________")
        body = (
            f'<p class="ok" role="status">{esc(_CODES["00"])}</p>'
            f'<div class="slip" id="voucher">{esc(chr(10).join(lines))}</div>'
        )
        return self._frame(loaded, body)

    def _settled(
        self, loaded: LoadedTerminal, batch: str, request: dict[str, Any], answer: dict[str, Any]
    ) -> bytes:
        data = answer.get("data") or {}
        balanced = answer.get("code") == "00"
        totals = request["totals"]
        rows = "".join(
            f"<tr><td>{esc(kind)}</td><td>{esc(v['count'])}</td>"
            f'<td class="num">¥{esc(v["amount"])}</td></tr>'
            for kind, v in totals.items()
        )
        diffs = "".join(
            f"<li>{esc(d.get('kind'))} {esc(d.get('trace_no'))}: "
            f"终端 {esc(d.get('terminal_amount'))} / 平台 {esc(d.get('host_amount'))}</li>"
            for d in data.get("differences", [])
        )
        state = "结算平 Balanced" if balanced else "结算不平 Totals differ"
        body = (
            f'<p class="{"ok" if balanced else "err"}" role="status">批次 {esc(batch)}: '
            f"{state}</p><table><tr><th>类型</th><th>笔数</th>"
            f'<th class="num">金额</th></tr>{rows}</table>'
            f"{f'<ul>{diffs}</ul>' if diffs else ''}"
        )
        return self._frame(loaded, body)

    def _refused(
        self, loaded: LoadedTerminal, what: str, answer: dict[str, Any], signature_ok: Any
    ) -> bytes:
        code = str(answer.get("code"))
        if code == "00" and not signature_ok:
            return self._problem(loaded, what, code, "应答签名无效，终端不予采信 (bad signature)")
        return self._problem(loaded, what, code, _CODES.get(code) or str(answer.get("msg", "")))

    def _problem(self, loaded: LoadedTerminal, what: str, code: str, text: str) -> bytes:
        body = (
            f"<h2>{esc(what)}</h2>"
            f'<p class="err" role="alert">{esc(text)} <small>（应答码 {esc(code)}）</small></p>'
        )
        return self._frame(loaded, body)


def _last_sale(lines: list[JournalLine]) -> JournalLine | None:
    """The batch's last approved sale, if nothing came after it (what 撤销 takes back)."""
    for line in reversed(lines):
        if line.kind == "SALE" and line.state == "APPROVED":
            return line
        if line.state == "APPROVED":
            return None
    return None


def create_app(terminals: list[dict[str, Any]], acquirer: ASGIApp | None = None) -> TerminalPage:
    """The page for these terminals: `{"merchant", "terminal", "key", "gateway_url",
    "journal"?, "acquirer_url"?}` each (the journal defaults to var/pos-sim/<terminal>.json);
    with `acquirer`, served alongside (the terminals' `acquirer_url` then points here)."""
    return TerminalPage(
        [
            LoadedTerminal(
                merchant=str(x["merchant"]),
                terminal=str(x["terminal"]),
                key=str(x["key"]),
                gateway_url=str(x["gateway_url"]),
                journal=Path(x.get("journal") or Path("var/pos-sim") / f"{x['terminal']}.json"),
                acquirer_url=x.get("acquirer_url"),
            )
            for x in terminals
        ],
        acquirer,
    )
