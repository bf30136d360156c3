"""Pure transforms between our channel types and Alipay's wire values. No I/O here.

Amounts become "12.34" strings only in this module; times are Beijing wall-clock strings
`yyyy-MM-dd HH:mm:ss`. Status mapping is exhaustive and pessimistic: an unknown status is
PENDING, never success.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from channels.base import (
    CreatePayment,
    InvalidNotification,
    Notification,
    OutcomeUnknown,
    PaymentStatus,
    RefundRequest,
    RefundResult,
    RefundState,
    Rejected,
    StatementKind,
    StatementLine,
    TradeState,
)
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = [
    "BEIJING",
    "NOTIFY_UNSIGNED",
    "PRODUCT_CODES",
    "TIME_FORMAT",
    "TRADE_NOT_EXIST",
    "bill_biz",
    "check_result",
    "create_biz",
    "notification",
    "parse_statement",
    "payment_status",
    "refund_biz",
    "refund_query_biz",
    "refund_query_result",
    "refund_result",
    "sign_content",
    "trade_biz",
    "trade_state",
]

BEIJING = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

SUCCESS_CODE = "10000"
"""Gateway code of a call that did what it was asked."""
UNKNOWN_CODES = frozenset({"20000"})
"""`20000 Service Currently Unavailable` (isp.unknow-error): the outcome is unknown."""
UNKNOWN_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "AQC.SYSTEM_ERROR", "isp.unknow-error"})
"""Sub-codes Alipay documents as "retry with the same parameters": outcome unknown."""
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"

PRODUCT_CODES: Mapping[str, str] = {
    "qr": "FACE_TO_FACE_PAYMENT",
    "page": "FAST_INSTANT_TRADE_PAY",
    "wap": "QUICK_WAP_WAY",
}

_TRADE_STATES: Mapping[str, TradeState] = {
    "WAIT_BUYER_PAY": TradeState.PENDING,
    "TRADE_SUCCESS": TradeState.SUCCEEDED,
    "TRADE_FINISHED": TradeState.FINISHED,
    "TRADE_CLOSED": TradeState.CLOSED,
}


def trade_state(status: str | None) -> TradeState:
    """Alipay trade_status → ours; anything unknown or missing is PENDING (never success)."""
    return _TRADE_STATES.get(status or "", TradeState.PENDING)


def beijing(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError("timezone-aware datetime required")
    return dt.astimezone(BEIJING).strftime(TIME_FORMAT)


def parse_beijing(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=BEIJING)


# ------------------------------------------------------------------ requests (biz_content)


def create_biz(req: CreatePayment) -> dict[str, Any]:
    if req.mode not in PRODUCT_CODES:
        raise ValueError(f"unknown Alipay mode {req.mode!r}; one of {sorted(PRODUCT_CODES)}")
    return {
        "out_trade_no": req.attempt_id,
        "total_amount": fen_to_yuan(req.amount),
        "subject": req.subject,
        "product_code": PRODUCT_CODES[req.mode],
        # Absolute expiry: Alipay closes the trade itself at this Beijing time.
        "time_expire": beijing(req.expires_at),
    }


def trade_biz(attempt_id: str) -> dict[str, Any]:
    return {"out_trade_no": attempt_id}


def refund_biz(req: RefundRequest) -> dict[str, Any]:
    biz: dict[str, Any] = {
        "out_trade_no": req.attempt_id,
        "out_request_no": req.refund_id,
        "refund_amount": fen_to_yuan(req.amount),
        "refund_reason": req.reason,
    }
    if req.channel_trade_no:
        biz["trade_no"] = req.channel_trade_no
    return biz


def refund_query_biz(refund_id: str, attempt_id: str) -> dict[str, Any]:
    return {
        "out_trade_no": attempt_id,
        "out_request_no": refund_id,
        "query_options": ["gmt_refund_pay"],
    }


def bill_biz(day: date) -> dict[str, Any]:
    return {"bill_type": "trade", "bill_date": day.isoformat()}


# ------------------------------------------------------------------ responses


def check_result(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A verified response body → itself if it succeeded; else the right ChannelError.

    Branches on `code`/`sub_code` only, never on message text.
    """
    code = str(body.get("code", ""))
    sub_code = body.get("sub_code")
    if code == SUCCESS_CODE and not sub_code:
        return body
    reason = f"alipay {code} {sub_code or ''} {body.get('sub_msg') or body.get('msg') or ''}"
    if code in UNKNOWN_CODES or sub_code in UNKNOWN_SUB_CODES:
        raise OutcomeUnknown(reason.strip(), code=str(sub_code or code))
    raise Rejected(reason.strip(), code=str(sub_code or code))


def _fen(text: Any) -> int | None:
    return None if text in (None, "") else yuan_to_fen(str(text))


def payment_status(attempt_id: str, body: Mapping[str, Any]) -> PaymentStatus:
    return PaymentStatus(
        attempt_id=attempt_id,
        state=trade_state(body.get("trade_status")),
        channel_trade_no=body.get("trade_no") or None,
        amount=_fen(body.get("total_amount")),
        paid_at=parse_beijing(body.get("send_pay_date")),
        buyer_id=body.get("buyer_user_id") or body.get("buyer_open_id") or None,
    )


def refund_result(req: RefundRequest, body: Mapping[str, Any]) -> RefundResult:
    """A refund call that returned 10000 has been accepted; `fund_change=N` on a retry
    with the same out_request_no means it was already done, which is the same success."""
    return RefundResult(
        refund_id=req.refund_id,
        state=RefundState.SUCCEEDED,
        amount=req.amount,
        refunded_at=parse_beijing(body.get("gmt_refund_pay")),
    )


def refund_query_result(refund_id: str, body: Mapping[str, Any]) -> RefundResult:
    # Alipay answers 10000 with no out_request_no when it has no such refund.
    if not body.get("out_request_no"):
        return RefundResult(refund_id=refund_id, state=RefundState.NOT_FOUND)
    state = (
        RefundState.SUCCEEDED
        if body.get("refund_status") == "REFUND_SUCCESS"
        else RefundState.PROCESSING
    )
    return RefundResult(
        refund_id=refund_id,
        state=state,
        amount=_fen(body.get("refund_amount")),
        refunded_at=parse_beijing(body.get("gmt_refund_pay")),
    )


# ------------------------------------------------------------------ notifications


def sign_content(params: Mapping[str, str], *, exclude: frozenset[str]) -> str:
    """Alipay's string to sign: non-empty params except `exclude`, sorted, `k=v&k=v`."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k])


NOTIFY_UNSIGNED = frozenset({"sign", "sign_type"})


def notification(fields: Mapping[str, str]) -> Notification:
    """Fields of an already verified notification → Notification; shape errors are invalid."""
    try:
        notify_id = fields["notify_id"]
        attempt_id = fields["out_trade_no"]
        status = fields["trade_status"]
        amount = _fen(fields.get("total_amount"))
        paid_at = parse_beijing(fields.get("gmt_payment"))
    except (KeyError, ValueError) as exc:
        raise InvalidNotification(f"malformed notification: {type(exc).__name__}") from None
    if not notify_id or not attempt_id:
        raise InvalidNotification("notification without notify_id or out_trade_no")
    return Notification(
        notify_id=notify_id,
        attempt_id=attempt_id,
        state=trade_state(status),
        channel_trade_no=fields.get("trade_no") or None,
        amount=amount,
        paid_at=paid_at,
        app_id=fields.get("app_id") or None,
        refund_id=fields.get("out_biz_no") or None,
        raw={k: v for k, v in fields.items() if k != "sign"},
    )


# ------------------------------------------------------------------ statement

DETAIL_SUFFIX = "_业务明细.csv"
COL_TRADE_NO = "支付宝交易号"
COL_OUT_TRADE_NO = "商户订单号"
COL_TYPE = "业务类型"
COL_FINISHED = "完成时间"
COL_AMOUNT = "订单金额（元）"
COL_REFUND_NO = "退款批次号/请求号"
COL_FEE = "服务费（元）"
KIND_BY_TYPE: Mapping[str, StatementKind] = {
    "交易": StatementKind.PAYMENT,
    "退款": StatementKind.REFUND,
}


def _header_key(name: str) -> str:
    # Alipay has shipped both full- and half-width parentheses in these headers.
    return name.strip().replace("(", "（").replace(")", "）")


def _detail_member(archive: zipfile.ZipFile) -> str:
    for name in archive.namelist():
        if name.endswith(DETAIL_SUFFIX):
            return name
    raise ValueError(f"no *{DETAIL_SUFFIX} in the bill archive: {archive.namelist()}")


def parse_statement(raw: bytes) -> list[StatementLine]:
    """Alipay's trade bill zip (GBK names and contents) → StatementLines.

    Columns are found by header name; cells lose their TAB/space padding; `#` lines are
    comments and totals; 业务类型 交易 → PAYMENT, 退款 → REFUND (negative, as given);
    服务费 (negative when Alipay deducts it) becomes the fee charged (positive).
    Raises ValueError for a file that is not a trade bill.
    """
    with zipfile.ZipFile(io.BytesIO(raw), metadata_encoding="gbk") as archive:
        text = archive.read(_detail_member(archive)).decode("gb18030")
    rows = csv.reader(line for line in text.splitlines() if line and not line.startswith("#"))
    header = next(rows, None)
    if header is None:
        return []
    col = {_header_key(name): i for i, name in enumerate(header)}
    missing = {COL_TRADE_NO, COL_OUT_TRADE_NO, COL_TYPE, COL_FINISHED, COL_AMOUNT} - col.keys()
    if missing:
        raise ValueError(f"bill header lacks {sorted(missing)}")

    def cell(row: list[str], name: str) -> str:
        i = col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    lines: list[StatementLine] = []
    for row in rows:
        kind = KIND_BY_TYPE.get(cell(row, COL_TYPE))
        if kind is None:
            continue
        occurred = parse_beijing(cell(row, COL_FINISHED))
        if occurred is None:
            raise ValueError(f"bill row without 完成时间: {cell(row, COL_TRADE_NO)}")
        # 服务费 is written from the merchant's side: what Alipay deducts is negative on a
        # payment, a fee given back on a refund is positive. Ours is a charge: flip it.
        fee = cell(row, COL_FEE)
        lines.append(
            StatementLine(
                channel_trade_no=cell(row, COL_TRADE_NO),
                attempt_id=cell(row, COL_OUT_TRADE_NO),
                kind=kind,
                amount=yuan_to_fen(cell(row, COL_AMOUNT)),
                fee=-yuan_to_fen(fee) if fee else 0,
                occurred_at=occurred,
                refund_id=(cell(row, COL_REFUND_NO) or None)
                if kind is StatementKind.REFUND
                else None,
            )
        )
    return lines
