"""An Alipay gateway simulator speaking the real wire protocol to the unmodified SDK.

A plain ASGI app (no framework: channels/ must not import Litestar). Serve it with uvicorn
`--http httptools`: the SDK sends an absolute-form request target
(`POST http://host:port/gateway.do?…`), which httptools routes by path correctly.

Wire behaviour mirrored from Alipay:
- `/gateway.do`: common params in the query string, `biz_content` in the form body; the
  RSA2 signature (all params but `sign`, sorted `k=v&…`) is verified with the app public key
  (bad → 40002 isv.invalid-signature). Responses are
  `{"<method_with_underscores>_response":{…},"sign":"…"}`, signed over the exact bytes of
  the inner object with the simulator's Alipay private key, as the SDK verifies them.
- Business errors are 40004 + `ACQ.*` sub_codes, signed, HTTP 200.
- Trades: precreate (invisible until scanned: query/close say ACQ.TRADE_NOT_EXIST) → scan
  → WAIT_BUYER_PAY → pay → TRADE_SUCCESS → refunds (full → TRADE_CLOSED); close.
- Async notifications: signed form POSTs to notify_url, retried until the body is exactly
  `success` on Alipay's schedule (scaled by `time_scale`), same notify_id on every retry.
- Daily trade bill: a 30-second URL to a zip whose member names and contents are GBK.

Control API (JSON) for tests and the demo lives under `/sim/…`; see `_ROUTES` below.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import html
import io
import itertools
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from channels.alipay.transforms import BEIJING, TIME_FORMAT, sign_content
from channels.money import fen_to_yuan, yuan_to_fen
from channels.sim_asgi import Receive, Scope, Send, lifespan, read_body

__all__ = [
    "RETRY_SCHEDULE_S",
    "AlipaySimulator",
    "SentNotification",
    "SimRefund",
    "SimTrade",
    "create_simulator",
]

log = structlog.get_logger(__name__)

# Alipay's notification schedule after a failed delivery: 4m, 10m, 10m, 1h, 2h, 6h, 15h
# (8 tries within 25 h). Multiplied by the simulator's time_scale.
RETRY_SCHEDULE_S = (240, 600, 600, 3600, 7200, 21600, 54000)
BILL_URL_TTL_S = 30.0
NOTIFY_TIMEOUT_S = 5.0

_Response = tuple[int, list[tuple[bytes, bytes]], bytes]

BILL_HEADER = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,"
    "终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,"
    "商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,"
    "退款批次号/请求号,服务费（元）,分润（元）,备注"
)
SUMMARY_HEADER = (
    "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,"
    "商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）"
)


class _Reply(Exception):
    """Raised inside a handler to answer a business error as Alipay does."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_code)
        self.body = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _biz_error(sub_code: str, sub_msg: str) -> _Reply:
    return _Reply("40004", "Business Failed", sub_code, sub_msg)


@dataclass
class SimRefund:
    out_request_no: str
    amount: int
    at: datetime
    reason: str


@dataclass
class SimTrade:
    out_trade_no: str
    trade_no: str
    amount: int
    subject: str
    product_code: str
    notify_url: str | None
    return_url: str | None
    time_expire: datetime | None
    created_at: datetime
    status: str = "PRECREATED"
    """PRECREATED is internal: Alipay has no trade until the buyer scans."""
    buyer_id: str | None = None
    buyer_logon_id: str | None = None
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    refunds: dict[str, SimRefund] = field(default_factory=dict)

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds.values())

    def public(self) -> dict[str, Any]:
        return {
            "out_trade_no": self.out_trade_no,
            "trade_no": self.trade_no,
            "status": self.status,
            "amount": self.amount,
            "refunded": self.refunded,
            "buyer_id": self.buyer_id,
            "paid_at": self.paid_at.strftime(TIME_FORMAT) if self.paid_at else None,
            "refunds": {k: v.amount for k, v in self.refunds.items()},
        }


@dataclass
class SentNotification:
    notify_id: str
    out_trade_no: str
    url: str
    fields: dict[str, str]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "notify_id": self.notify_id,
            "out_trade_no": self.out_trade_no,
            "trade_status": self.fields.get("trade_status"),
            "out_biz_no": self.fields.get("out_biz_no"),
            "url": self.url,
            "attempts": self.attempts,
            "delivered": self.delivered,
        }


@dataclass
class _NotifyPlan:
    fail: int = 0
    """Deliveries of the next notification to drop as if the network lost them."""
    duplicate: bool = False
    delay_s: float = 0.0


def _load_private(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("expected an RSA private key")
    return key


def _load_public(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("expected an RSA public key")
    return key


class _GbkZipInfo(zipfile.ZipInfo):
    """zipfile writes non-ASCII names as UTF-8 with flag 0x800; Alipay's are plain GBK."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("gbk"), self.flag_bits


class AlipaySimulator:
    """The ASGI app. One instance keeps its trades in memory for its lifetime."""

    def __init__(
        self,
        *,
        app_id: str,
        app_public_key_pem: str,
        alipay_private_key_pem: str,
        time_scale: float = 1.0,
        seller_id: str = "2088000000000001",
        fee_basis_points: int = 60,
    ) -> None:
        self.app_id = app_id
        self.time_scale = time_scale
        self.seller_id = seller_id
        self.fee_basis_points = fee_basis_points
        self._app_public = _load_public(app_public_key_pem)
        self._alipay_private = _load_private(alipay_private_key_pem)
        self.trades: dict[str, SimTrade] = {}
        self.notifications: list[SentNotification] = []
        self._plan = _NotifyPlan()
        self._gateway_delay_s = 0.0
        self._gateway_status: int | None = None
        self._gateway_count = 0
        self._clock_offset = timedelta()
        self._bills: dict[str, tuple[float, bytes, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ helpers

    def now(self) -> datetime:
        return datetime.now(BEIJING) + self._clock_offset

    def _sign(self, content: bytes) -> str:
        sig = self._alipay_private.sign(content, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(sig).decode("ascii")

    def _verify(self, params: Mapping[str, str]) -> bool:
        sign = params.get("sign", "")
        content = sign_content(params, exclude=frozenset({"sign"})).encode("utf-8")
        try:
            raw = base64.b64decode(sign, validate=True)
            self._app_public.verify(raw, content, padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - any failure is "signature does not verify"
            return False
        return True

    def _trade_no(self) -> str:
        return f"{self.now():%Y%m%d}22001{next(self._seq):013d}"

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, on_shutdown=self._cancel_tasks)
            return
        if scope["type"] != "http":
            return
        req = _Request(scope, await read_body(receive))
        try:
            status, headers, payload = await self._route(req)
        except Exception:
            log.exception("alipay_sim_error", path=req.path)
            status, headers, payload = 500, [(b"content-type", b"text/plain")], b"error"
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _route(self, req: _Request) -> _Response:
        path, method = req.path, req.method
        if path == "/gateway.do":
            return await self._gateway(req)
        if path == "/health":
            return _json(200, {"ok": True})
        parts = path.strip("/").split("/")
        if parts[:1] == ["sim"]:
            handler = _ROUTES.get((method, parts[1] if len(parts) > 1 else "", len(parts)))
            if handler is not None:
                return await handler(self, req)
        return _json(404, {"error": "not found", "path": path})

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, req: _Request) -> _Response:
        params = {**req.query, **req.form}
        method = params.get("method", "")
        if self._gateway_count > 0:
            self._gateway_count -= 1
            if self._gateway_delay_s:
                await asyncio.sleep(self._gateway_delay_s)
            if self._gateway_status:
                return self._gateway_status, [(b"content-type", b"text/plain")], b"gateway error"
        if method in {"alipay.trade.page.pay", "alipay.trade.wap.pay"}:
            return self._page_pay(req, params, method)
        handler = _METHODS.get(method)
        key = (method.replace(".", "_") + "_response") if handler else "error_response"
        try:
            if handler is None:
                raise _Reply("40002", "Invalid Arguments", "isv.invalid-method", "不存在的方法名")
            self._check_request(params)
            biz = json.loads(params.get("biz_content") or "{}")
            inner = {"code": "10000", "msg": "Success", **handler(self, _Call(req, params, biz))}
        except _Reply as reply:
            inner = reply.body
        except (ValueError, KeyError, TypeError):
            inner = {
                "code": "40004",
                "msg": "Business Failed",
                "sub_code": "ACQ.INVALID_PARAMETER",
                "sub_msg": "参数无效",
            }
        return self._signed(key, inner)

    def _check_request(self, params: Mapping[str, str]) -> None:
        if params.get("sign_type") != "RSA2":
            raise _Reply("40002", "Invalid Arguments", "isv.invalid-signature-type", "签名类型错误")
        if not self._verify(params):
            raise _Reply(
                "40002", "Invalid Arguments", "isv.invalid-signature", "验签出错，请检查签名"
            )
        if params.get("app_id") != self.app_id:
            raise _Reply("40002", "Invalid Arguments", "isv.invalid-app-id", "无效的AppID参数")

    def _signed(self, key: str, inner: Mapping[str, Any]) -> _Response:
        content = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        sign = self._sign(content)
        body = b'{"' + key.encode() + b'":' + content + b',"sign":"' + sign.encode() + b'"}'
        return 200, [(b"content-type", b"text/html;charset=utf-8")], body

    def _page_pay(self, req: _Request, params: Mapping[str, str], method: str) -> _Response:
        try:
            self._check_request(params)
            biz = json.loads(params.get("biz_content") or "{}")
            trade = self._new_trade(biz, params)
        except _Reply as reply:
            page = f"<h1>{html.escape(reply.body['sub_code'])}</h1><p>{method}</p>"
            return 200, [(b"content-type", b"text/html;charset=utf-8")], page.encode()
        location = f"{req.base_url}/sim/cashier/{urllib.parse.quote(trade.out_trade_no)}"
        return 302, [(b"location", location.encode())], b""

    def _new_trade(self, biz: Mapping[str, Any], params: Mapping[str, str]) -> SimTrade:
        out_trade_no = str(biz["out_trade_no"])
        amount = yuan_to_fen(str(biz["total_amount"]))
        if not 1 <= amount <= 100_000_000_00:
            raise _biz_error("ACQ.INVALID_PARAMETER", "total_amount 超出范围")
        existing = self.trades.get(out_trade_no)
        if existing is not None:
            if existing.status in {"TRADE_SUCCESS", "TRADE_FINISHED"}:
                raise _biz_error("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            if existing.status == "TRADE_CLOSED":
                raise _biz_error("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            if existing.amount != amount:
                raise _biz_error("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            return existing
        expire = biz.get("time_expire")
        trade = SimTrade(
            out_trade_no=out_trade_no,
            trade_no=self._trade_no(),
            amount=amount,
            subject=str(biz.get("subject", "")),
            product_code=str(biz.get("product_code", "")),
            notify_url=params.get("notify_url"),
            return_url=params.get("return_url"),
            time_expire=(
                datetime.strptime(expire, TIME_FORMAT).replace(tzinfo=BEIJING) if expire else None
            ),
            created_at=self.now(),
        )
        self.trades[out_trade_no] = trade
        return trade

    def _visible(self, biz: Mapping[str, Any]) -> SimTrade:
        """The trade a query/close/refund names, as Alipay sees it (scanned or later)."""
        trade = None
        if biz.get("trade_no"):
            trade = next((t for t in self.trades.values() if t.trade_no == biz["trade_no"]), None)
        elif biz.get("out_trade_no"):
            trade = self.trades.get(str(biz["out_trade_no"]))
        else:
            raise _biz_error("ACQ.INVALID_PARAMETER", "trade_no 和 out_trade_no 不能同时为空")
        if trade is None or trade.status == "PRECREATED":
            raise _biz_error("ACQ.TRADE_NOT_EXIST", "交易不存在")
        self._expire(trade)
        return trade

    def _expire(self, trade: SimTrade) -> None:
        if (
            trade.status == "WAIT_BUYER_PAY"
            and trade.time_expire is not None
            and self.now() > trade.time_expire
        ):
            trade.status = "TRADE_CLOSED"
            trade.closed_at = trade.time_expire

    def m_precreate(self, call: _Call) -> dict[str, Any]:
        trade = self._new_trade(call.biz, call.params)
        qr = f"{call.req.base_url}/sim/cashier/{urllib.parse.quote(trade.out_trade_no)}"
        return {"out_trade_no": trade.out_trade_no, "qr_code": qr}

    def m_query(self, call: _Call) -> dict[str, Any]:
        biz = call.biz
        trade = self._visible(biz)
        out: dict[str, Any] = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "trade_status": trade.status,
            "total_amount": fen_to_yuan(trade.amount),
            "buyer_user_id": trade.buyer_id,
        }
        if trade.paid_at is not None:
            out["buyer_pay_amount"] = fen_to_yuan(trade.amount)
            out["receipt_amount"] = fen_to_yuan(trade.amount)
            out["send_pay_date"] = trade.paid_at.strftime(TIME_FORMAT)
        return out

    def m_close(self, call: _Call) -> dict[str, Any]:
        biz = call.biz
        trade = self._visible(biz)
        if trade.status != "WAIT_BUYER_PAY":
            # Alipay's documented answer to closing anything but an unpaid trade.
            raise _biz_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        trade.status = "TRADE_CLOSED"
        trade.closed_at = self.now()
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}

    def m_refund(self, call: _Call) -> dict[str, Any]:
        biz = call.biz
        trade = self._visible(biz)
        request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        amount = yuan_to_fen(str(biz["refund_amount"]))
        if amount <= 0:
            raise _biz_error("ACQ.INVALID_PARAMETER", "退款金额无效")
        previous = trade.refunds.get(request_no)
        fund_change = "Y"
        if previous is not None:
            if previous.amount != amount:
                raise _biz_error("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求")
            fund_change = "N"
        else:
            if trade.status == "TRADE_FINISHED":
                raise _biz_error("ACQ.TRADE_HAS_FINISHED", "交易已完结")
            if trade.status != "TRADE_SUCCESS":
                raise _biz_error("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            if trade.refunded + amount > trade.amount:
                raise _biz_error("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
            previous = SimRefund(request_no, amount, self.now(), str(biz.get("refund_reason", "")))
            trade.refunds[request_no] = previous
            if trade.refunded == trade.amount:
                trade.status = "TRADE_CLOSED"
                trade.closed_at = previous.at
            self._notify(trade, refund=previous)
        return {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "fund_change": fund_change,
            "refund_fee": fen_to_yuan(trade.refunded),
            "gmt_refund_pay": previous.at.strftime(TIME_FORMAT),
            "buyer_user_id": trade.buyer_id,
        }

    def m_refund_query(self, call: _Call) -> dict[str, Any]:
        biz = call.biz
        trade = self._visible(biz)
        out: dict[str, Any] = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no}
        refund = trade.refunds.get(str(biz.get("out_request_no", "")))
        if refund is None:
            return out  # Alipay: 10000 without refund fields means "no such refund"
        out |= {
            "out_request_no": refund.out_request_no,
            "refund_reason": refund.reason,
            "total_amount": fen_to_yuan(trade.amount),
            "refund_amount": fen_to_yuan(refund.amount),
            "refund_status": "REFUND_SUCCESS",
        }
        if "gmt_refund_pay" in (biz.get("query_options") or []):
            out["gmt_refund_pay"] = refund.at.strftime(TIME_FORMAT)
        return out

    def m_bill(self, call: _Call) -> dict[str, Any]:
        biz = call.biz
        if biz.get("bill_type") != "trade":
            raise _biz_error("ACQ.INVALID_PARAMETER", "仅支持 bill_type=trade")
        try:
            day = date.fromisoformat(str(biz.get("bill_date")))
        except ValueError:
            raise _biz_error("ACQ.INVALID_PARAMETER", "bill_date 格式错误") from None
        if day >= self.now().date():  # daily bills exist from T+1 on
            raise _biz_error("isp.bill_not_exist", "账单不存在")
        token = secrets.token_urlsafe(16)
        name = f"{self.seller_id}_{day:%Y%m%d}.csv.zip"
        self._bills[token] = (time.monotonic() + BILL_URL_TTL_S, self.bill_zip(day), name)
        return {"bill_download_url": f"{call.req.base_url}/sim/bill/{token}"}

    # ------------------------------------------------------------------ bill file

    def _fee(self, amount: int) -> int:
        return (abs(amount) * self.fee_basis_points + 5000) // 10000

    def bill_zip(self, day: date) -> bytes:
        """The trade bill of Beijing day `day`: detail + summary CSVs, GBK, in a zip."""
        rows: list[list[str]] = []
        pays = refunds = 0
        pay_total = refund_total = fee_total = 0
        for trade in self.trades.values():
            if trade.paid_at is not None and trade.paid_at.date() == day:
                fee = -self._fee(trade.amount)
                rows.append(
                    self._bill_row(
                        trade,
                        kind="交易",
                        amount=trade.amount,
                        fee=fee,
                        at=trade.paid_at,
                        request_no="",
                    )
                )
                pays += 1
                pay_total += trade.amount
                fee_total += fee
            for refund in trade.refunds.values():
                if refund.at.date() == day:
                    fee = self._fee(refund.amount)
                    rows.append(
                        self._bill_row(
                            trade,
                            kind="退款",
                            amount=-refund.amount,
                            fee=fee,
                            at=refund.at,
                            request_no=refund.out_request_no,
                        )
                    )
                    refunds += 1
                    refund_total -= refund.amount
                    fee_total += fee
        stamp = self.now().strftime("%Y年%m月%d日 %H:%M:%S")
        start = f"{day:%Y年%m月%d日} 00:00:00"
        end = f"{day + timedelta(days=1):%Y年%m月%d日} 00:00:00"
        out = io.StringIO()
        out.write("#支付宝业务明细查询\r\n")
        out.write(f"#账号：[{self.seller_id}0156]\r\n")
        out.write(f"#起始日期：[{start}]   终止日期：[{end}]\r\n")
        out.write(
            "#-----------------------------------------业务明细列表----------------------------------------\r\n"
        )
        out.write(BILL_HEADER + "\r\n")
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        out.write(
            "#-----------------------------------------业务明细列表结束------------------------------------\r\n"
        )
        out.write(
            f"#交易合计：{pays}笔，商家实收：{fen_to_yuan(pay_total)}元，商家优惠：0.00元\r\n"
        )
        out.write(
            f"#退款合计：{refunds}笔，商家实收：{fen_to_yuan(refund_total)}元，商家优惠：0.00元\r\n"
        )
        out.write(f"#导出时间：[{stamp}]\r\n")
        net = pay_total + refund_total + fee_total
        summary = io.StringIO()
        summary.write("#支付宝业务汇总查询\r\n")
        summary.write(f"#账号：[{self.seller_id}0156]\r\n")
        summary.write(f"#起始日期：[{start}]   终止日期：[{end}]\r\n")
        summary.write(SUMMARY_HEADER + "\r\n")
        total = fen_to_yuan(pay_total + refund_total)
        summary.write(
            f"合计,,{pays},{refunds},{total},{total},0.00,0.00,0.00,"
            f"{fen_to_yuan(fee_total)},0.00,{fen_to_yuan(net)}\r\n"
        )
        summary.write(f"#导出时间：[{stamp}]\r\n")
        prefix = f"{self.seller_id}0156_{day:%Y%m%d}"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for suffix, text in (("_业务明细.csv", out), ("_业务明细(汇总).csv", summary)):
                info = _GbkZipInfo(prefix + suffix, date_time=self.now().timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, text.getvalue().encode("gbk"))
        return buf.getvalue()

    def _bill_row(
        self, trade: SimTrade, *, kind: str, amount: int, fee: int, at: datetime, request_no: str
    ) -> list[str]:
        # Real bills pad most cells with a trailing TAB (to stop spreadsheets reformatting).
        tab = "\t"
        yuan = fen_to_yuan(amount)
        return [
            trade.trade_no + tab,
            trade.out_trade_no + tab,
            kind + tab,
            trade.subject + tab,
            trade.created_at.strftime(TIME_FORMAT) + tab,
            at.strftime(TIME_FORMAT) + tab,
            tab,
            tab,
            tab,
            tab,
            (trade.buyer_logon_id or "") + tab,
            yuan,
            yuan,
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            "0.00",
            tab,
            "0.00",
            "0.00",
            request_no + tab,
            fen_to_yuan(fee),
            "0.00",
            tab,
        ]

    # ------------------------------------------------------------------ notifications

    def _notify(self, trade: SimTrade, refund: SimRefund | None = None) -> None:
        if not trade.notify_url:
            return
        now = self.now()
        fields: dict[str, str] = {
            "notify_time": now.strftime(TIME_FORMAT),
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16),
            "charset": "utf-8",
            "version": "1.0",
            "app_id": self.app_id,
            "auth_app_id": self.app_id,
            "seller_id": self.seller_id,
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "trade_status": trade.status,
            "total_amount": fen_to_yuan(trade.amount),
            "subject": trade.subject,
            "gmt_create": trade.created_at.strftime(TIME_FORMAT),
        }
        if trade.paid_at is not None:
            fields |= {
                "receipt_amount": fen_to_yuan(trade.amount),
                "buyer_pay_amount": fen_to_yuan(trade.amount),
                "invoice_amount": fen_to_yuan(trade.amount),
                "gmt_payment": trade.paid_at.strftime(TIME_FORMAT),
                "buyer_id": trade.buyer_id or "",
                "buyer_logon_id": trade.buyer_logon_id or "",
                "fund_bill_list": json.dumps(
                    [{"amount": fen_to_yuan(trade.amount), "fundChannel": "ALIPAYACCOUNT"}],
                    separators=(",", ":"),
                ),
            }
        if trade.closed_at is not None:
            fields["gmt_close"] = trade.closed_at.strftime(TIME_FORMAT)
        if refund is not None:
            fields |= {
                "out_biz_no": refund.out_request_no,
                "refund_fee": fen_to_yuan(trade.refunded),
                "gmt_refund": refund.at.strftime(TIME_FORMAT) + ".000",
            }
        fields = {k: v for k, v in fields.items() if v}
        fields["sign_type"] = "RSA2"
        content = sign_content(fields, exclude=frozenset({"sign", "sign_type"}))
        fields["sign"] = self._sign(content.encode("utf-8"))
        note = SentNotification(fields["notify_id"], trade.out_trade_no, trade.notify_url, fields)
        self.notifications.append(note)
        plan, self._plan = self._plan, _NotifyPlan()
        self._spawn(self._deliver(note, plan))

    async def _deliver(self, note: SentNotification, plan: _NotifyPlan) -> None:
        waits = (plan.delay_s, *(s * self.time_scale for s in RETRY_SCHEDULE_S))
        body = urllib.parse.urlencode(note.fields).encode("ascii")
        for attempt, wait in enumerate(waits, start=1):
            if wait:
                await asyncio.sleep(wait)
            if attempt <= plan.fail:
                note.attempts.append({"try": attempt, "status": None, "body": "dropped"})
                continue
            status, answer = await asyncio.to_thread(_post_form, note.url, body)
            note.attempts.append({"try": attempt, "status": status, "body": answer[:200]})
            if status == 200 and answer == "success":
                note.delivered = True
                if plan.duplicate:
                    plan.duplicate = False
                    status, answer = await asyncio.to_thread(_post_form, note.url, body)
                    note.attempts.append({"try": attempt, "status": status, "body": answer[:200]})
                return
        log.warning("alipay_sim_notify_gave_up", notify_id=note.notify_id)

    # ------------------------------------------------------------------ buyer actions

    def scan(self, out_trade_no: str, buyer_id: str | None = None) -> SimTrade:
        trade = self._trade(out_trade_no)
        self._expire(trade)
        if trade.status == "PRECREATED":
            if trade.time_expire is not None and self.now() > trade.time_expire:
                trade.status = "TRADE_CLOSED"  # never existed for the buyer: code expired
                raise _SimConflict("code expired")
            trade.status = "WAIT_BUYER_PAY"
            trade.buyer_id = buyer_id or f"2088{secrets.randbelow(10**12):012d}"
            trade.buyer_logon_id = "138****8000"
        return trade

    def pay(self, out_trade_no: str, amount: int | None = None) -> SimTrade:
        trade = self.scan(out_trade_no)
        if trade.status != "WAIT_BUYER_PAY":
            raise _SimConflict(f"trade is {trade.status}")
        if amount is not None:
            trade.amount = amount
        trade.status = "TRADE_SUCCESS"
        trade.paid_at = self.now()
        self._notify(trade)
        return trade

    def abandon(self, out_trade_no: str) -> SimTrade:
        trade = self._trade(out_trade_no)
        if trade.status not in {"PRECREATED", "WAIT_BUYER_PAY"}:
            raise _SimConflict(f"trade is {trade.status}")
        scanned = trade.status == "WAIT_BUYER_PAY"
        trade.status = "TRADE_CLOSED"
        trade.closed_at = self.now()
        if scanned:
            self._notify(trade)
        return trade

    def finish(self, out_trade_no: str) -> SimTrade:
        trade = self._trade(out_trade_no)
        if trade.status != "TRADE_SUCCESS":
            raise _SimConflict(f"trade is {trade.status}")
        trade.status = "TRADE_FINISHED"
        self._notify(trade)
        return trade

    def _trade(self, out_trade_no: str) -> SimTrade:
        trade = self.trades.get(out_trade_no)
        if trade is None:
            raise _SimNotFound(out_trade_no)
        return trade

    # ------------------------------------------------------------------ control API

    async def c_trade(self, req: _Request) -> _Response:
        parts = req.parts
        out_trade_no = urllib.parse.unquote(parts[2])
        action = parts[3] if len(parts) > 3 else ""
        data = req.json()
        try:
            if action == "scan":
                trade = self.scan(out_trade_no, data.get("buyer_id"))
            elif action == "pay":
                trade = self.pay(out_trade_no, data.get("amount"))
            elif action == "abandon":
                trade = self.abandon(out_trade_no)
            elif action == "finish":
                trade = self.finish(out_trade_no)
            elif action == "" and req.method == "GET":
                trade = self._trade(out_trade_no)
            else:
                return _json(404, {"error": f"unknown action {action!r}"})
        except _SimNotFound:
            return _json(404, {"error": "no such trade", "out_trade_no": out_trade_no})
        except _SimConflict as exc:
            return _json(409, {"error": str(exc)})
        return _json(200, trade.public())

    async def c_notifications(self, req: _Request) -> _Response:
        if req.method == "GET":
            return _json(200, [n.public() for n in self.notifications])
        data = req.json()  # POST /sim/notifications/next
        self._plan = _NotifyPlan(
            fail=int(data.get("fail", 0)),
            duplicate=bool(data.get("duplicate", False)),
            delay_s=float(data.get("delay_s", 0.0)),
        )
        return _json(200, {"next": vars(self._plan)})

    async def c_gateway(self, req: _Request) -> _Response:
        data = req.json()  # POST /sim/gateway/next
        self._gateway_delay_s = float(data.get("delay_s", 0.0))
        status = data.get("status")
        self._gateway_status = int(status) if status else None
        self._gateway_count = int(data.get("count", 1))
        return _json(200, {"count": self._gateway_count})

    async def c_clock(self, req: _Request) -> _Response:
        data = req.json()  # POST /sim/clock {"offset_s": -86400}
        self._clock_offset = timedelta(seconds=float(data.get("offset_s", 0.0)))
        return _json(200, {"now": self.now().strftime(TIME_FORMAT)})

    async def c_bill(self, req: _Request) -> _Response:
        parts = req.parts
        entry = self._bills.get(parts[2])
        if entry is None or time.monotonic() > entry[0]:
            self._bills.pop(parts[2], None)
            return _json(404, {"error": "bill URL expired or unknown"})
        _, data, name = entry
        disposition = f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}"
        return (
            200,
            [(b"content-type", b"application/zip"), (b"content-disposition", disposition.encode())],
            data,
        )

    async def c_cashier(self, req: _Request) -> _Response:
        parts = req.parts
        out_trade_no = urllib.parse.unquote(parts[2])
        try:
            if req.method == "POST":
                trade = self.pay(out_trade_no)
                if trade.return_url:
                    return 302, [(b"location", self._return_url(trade).encode())], b""
            else:
                trade = self.scan(out_trade_no)
        except _SimNotFound:
            return _html(404, "<h1>交易不存在</h1>")
        except _SimConflict as exc:
            return _html(409, f"<h1>无法支付</h1><p>{html.escape(str(exc))}</p>")
        return _html(200, _cashier_page(trade))

    def _return_url(self, trade: SimTrade) -> str:
        """The synchronous return (page/wap pay): signed params appended to return_url."""
        assert trade.return_url is not None
        fields = {
            "charset": "utf-8",
            "out_trade_no": trade.out_trade_no,
            "method": (
                "alipay.trade.wap.pay.return"
                if trade.product_code == "QUICK_WAP_WAY"
                else "alipay.trade.page.pay.return"
            ),
            "total_amount": fen_to_yuan(trade.amount),
            "trade_no": trade.trade_no,
            "auth_app_id": self.app_id,
            "version": "1.0",
            "app_id": self.app_id,
            "seller_id": self.seller_id,
            "timestamp": self.now().strftime(TIME_FORMAT),
        }
        fields["sign"] = self._sign(
            sign_content(fields, exclude=frozenset({"sign", "sign_type"})).encode("utf-8")
        )
        fields["sign_type"] = "RSA2"
        sep = "&" if "?" in trade.return_url else "?"
        return trade.return_url + sep + urllib.parse.urlencode(fields)


class _SimNotFound(Exception):
    pass


class _SimConflict(Exception):
    pass


class _Call:
    """One gateway call: the HTTP request, its merged params, the parsed biz_content."""

    def __init__(self, req: _Request, params: Mapping[str, str], biz: Mapping[str, Any]) -> None:
        self.req = req
        self.params = params
        self.biz = biz


class _Request:
    def __init__(self, scope: Scope, body: bytes) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.parts = self.path.strip("/").split("/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.headers = headers
        self.body = body
        host = headers.get("host") or "{}:{}".format(*scope.get("server") or ("127.0.0.1", 80))
        self.base_url = f"{scope.get('scheme', 'http')}://{host}"
        self.query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("ascii")))
        ctype = headers.get("content-type", "")
        self.form: dict[str, str] = {}
        if ctype.startswith("application/x-www-form-urlencoded") and body:
            self.form = dict(urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True))

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        data = json.loads(self.body)
        return data if isinstance(data, dict) else {}


def _json(status: int, data: Any) -> _Response:
    payload = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return status, [(b"content-type", b"application/json")], payload


def _html(status: int, page: str) -> _Response:
    return status, [(b"content-type", b"text/html;charset=utf-8")], page.encode("utf-8")


def _cashier_page(trade: SimTrade) -> str:
    subject = html.escape(trade.subject)
    amount = fen_to_yuan(trade.amount)
    action = urllib.parse.quote(trade.out_trade_no)
    if trade.status == "WAIT_BUYER_PAY":
        button = (
            f'<form method="post" action="/sim/cashier/{action}">'
            '<button type="submit" style="font-size:1.4em;padding:.5em 2em">确认付款 Pay</button>'
            "</form>"
        )
    else:
        button = f"<p><strong>{html.escape(trade.status)}</strong></p>"
    return (
        '<!doctype html><html lang="zh"><meta charset="utf-8"><title>支付宝收银台（模拟）</title>'
        '<body style="font-family:sans-serif;max-width:28em;margin:3em auto">'
        "<h1>支付宝收银台（模拟）</h1>"
        f"<p>{subject}</p><p style='font-size:2em'>¥ {amount}</p>"
        f"<p>订单号 {html.escape(trade.out_trade_no)}</p>{button}</body></html>"
    )


def _post_form(url: str, body: bytes) -> tuple[int | None, str]:
    """One notification delivery; (status, body) — (None, error) when nothing came back."""
    req = urllib.request.Request(  # noqa: S310 - the merchant's notify_url is http(s) by contract
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(req, timeout=NOTIFY_TIMEOUT_S) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            return int(exc.code), exc.read().decode("utf-8", "replace")
        return int(exc.code), ""
    except OSError as exc:
        return None, type(exc).__name__


_Handler = Callable[[AlipaySimulator, _Call], dict[str, Any]]
_METHODS: dict[str, _Handler] = {
    "alipay.trade.precreate": AlipaySimulator.m_precreate,
    "alipay.trade.query": AlipaySimulator.m_query,
    "alipay.trade.close": AlipaySimulator.m_close,
    "alipay.trade.refund": AlipaySimulator.m_refund,
    "alipay.trade.fastpay.refund.query": AlipaySimulator.m_refund_query,
    "alipay.data.dataservice.bill.downloadurl.query": AlipaySimulator.m_bill,
}

_Control = Callable[[AlipaySimulator, _Request], Awaitable[_Response]]
# (HTTP method, second path segment, number of segments) → handler
_ROUTES: dict[tuple[str, str, int], _Control] = {
    ("GET", "trades", 3): AlipaySimulator.c_trade,
    ("POST", "trades", 4): AlipaySimulator.c_trade,
    ("GET", "notifications", 2): AlipaySimulator.c_notifications,
    ("POST", "notifications", 3): AlipaySimulator.c_notifications,
    ("POST", "gateway", 3): AlipaySimulator.c_gateway,
    ("POST", "clock", 2): AlipaySimulator.c_clock,
    ("GET", "bill", 3): AlipaySimulator.c_bill,
    ("GET", "cashier", 3): AlipaySimulator.c_cashier,
    ("POST", "cashier", 3): AlipaySimulator.c_cashier,
}


def create_simulator(
    *,
    app_id: str,
    app_public_key_pem: str,
    alipay_private_key_pem: str,
    time_scale: float = 1.0,
) -> AlipaySimulator:
    """The simulator ASGI app for one merchant app."""
    return AlipaySimulator(
        app_id=app_id,
        app_public_key_pem=app_public_key_pem,
        alipay_private_key_pem=alipay_private_key_pem,
        time_scale=time_scale,
    )
