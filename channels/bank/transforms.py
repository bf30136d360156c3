"""Pure transforms of the bank interface (docs/channels/bank.md): signing, shapes, status maps.

Signing (both directions, requests and responses) — HMAC-SHA256 with the bank's secret, or
SM2 with SM3 with each side's own key (channels.bank.signing, chosen per bank), over the
canonical string

    "<METHOD>\\n<path>\\n<X-Bank-Timestamp>\\n<X-Bank-Nonce>\\n<hex sha256 of the body>"

(a response uses METHOD "RESPONSE" and the request's path). Headers: `X-Bank-Code`,
`X-Bank-Timestamp` (unix seconds), `X-Bank-Nonce` (≥ 16 chars, used once) and
`X-Bank-Signature` (lowercase hex). Binding the path stops a signed query body being replayed
as a confirm; the timestamp window (±300 s) and the nonce stop replays of a whole message.
Bodies are UTF-8 JSON; amounts are yuan strings with two decimals; times are Beijing time
`yyyy-MM-dd HH:mm:ss`. No I/O here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from channels.bank.signing import Signing, as_signing
from channels.base import (
    InvalidNotification,
    PayMode,
    RefundState,
    StatementKind,
    StatementLine,
    TradeState,
)
from channels.money import yuan_to_fen

__all__ = [
    "BankAnswer",
    "ResultCode",
    "Verified",
    "canonical",
    "channel_name",
    "format_time",
    "parse_statement",
    "parse_time",
    "pay_mode",
    "refund_state",
    "sign",
    "statement_csv",
    "trade_state",
    "verify",
]

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_SKEW_S = 300
VERSIONS = frozenset({"1.0"})
"""Protocol versions we speak; a message's optional `version` field (absent: 1.0)."""

H_CODE = "x-bank-code"
H_TS = "x-bank-timestamp"
H_NONCE = "x-bank-nonce"
H_SIG = "x-bank-signature"


class ResultCode:
    """Result codes of the interface, mirrored in meaning from the genre's."""

    OK = "00000"
    PARAMETER_ERROR = "10002"
    VERSION_ERROR = "10003"
    UNKNOWN_CODE = "11001"
    CHECK_FAILED = "11002"
    PAST_DEADLINE = "11003"
    CANCELLED = "11004"
    CANNOT_COLLECT = "11006"
    DUPLICATE_CONFIRMATION = "12001"
    AMOUNT_DIFFERS = "12004"
    # The day-end account check (日终对账).
    CHECK_AMOUNT_DIFFERS = "15001"
    CHECK_MISSING_AT_DAY_END = "15002"
    CHECK_MISSING_INTRADAY = "15003"
    CHECK_SENT_TWICE = "15010"
    NO_PRIOR_QUERY = "12005"
    ALREADY_PAID = "11005"  # ours: absent from the list we mirror
    NOT_CONFIRMED = "12006"  # ours: a reversal of a confirmation we never recorded
    REVERSAL_TOO_LATE = "12007"  # ours: a reversal after its business day
    BAD_SIGNATURE = "19001"
    BAD_REQUEST = "19002"
    TRY_LATER = "19003"  # ours: nothing written; send the same message again later
    UNKNOWN_BANK = "19004"  # ours: no such bank registered, or it is disabled
    # The bank's own answers to our calls.
    ORDER_NOT_FOUND = "13001"
    ORDER_PAID = "13002"
    REFUND_EXCEEDS = "13003"


def channel_name(bank_code: str) -> str:
    """The channel a bank's payments are recorded under."""
    return f"bank:{bank_code}"


@dataclass(frozen=True, slots=True)
class BankAnswer:
    """The bank's answer document: `{"code", "msg", "data"}`."""

    code: str
    msg: str
    data: dict[str, Any] | None = field(default=None)

    def doc(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg, "data": self.data}


def canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(
    key: bytes | Signing, method: str, path: str, body: bytes, bank_code: str
) -> dict[str, str]:
    """Headers that sign `body` for `method path` now, with a fresh nonce (`key`: the
    bank's Signing, or a bare HMAC secret)."""
    ts = str(int(time.time()))
    nonce = secrets.token_hex(12)
    mac = as_signing(key).sign(canonical(method, path, ts, nonce, body))
    return {
        "X-Bank-Code": bank_code,
        "X-Bank-Timestamp": ts,
        "X-Bank-Nonce": nonce,
        "X-Bank-Signature": mac,
        "Content-Type": "application/json",
    }


@dataclass(frozen=True, slots=True)
class Verified:
    bank_code: str
    nonce: str


def verify(  # noqa: PLR0917 - mirrors the canonical string's parts, in order
    key: bytes | Signing,
    bank_code: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> Verified:
    """Check the signature, the bank code and the timestamp window; nonce reuse is the caller's.

    `headers` must be case-insensitive or lowercased.
    """
    got_code = headers.get(H_CODE, "")
    ts = headers.get(H_TS, "")
    nonce = headers.get(H_NONCE, "")
    mac = headers.get(H_SIG, "")
    if got_code != bank_code:
        raise InvalidNotification("bank code does not match the endpoint", code="bank_code")
    if not (ts.isdigit() and len(nonce) >= 16 and mac):
        raise InvalidNotification("signature headers missing", code="signature_missing")
    if abs((now if now is not None else time.time()) - int(ts)) > MAX_SKEW_S:
        raise InvalidNotification("timestamp outside the window", code="timestamp")
    if not as_signing(key).verify(canonical(method, path, ts, nonce, body), mac):
        raise InvalidNotification("bad signature", code="signature")
    return Verified(bank_code=got_code, nonce=nonce)


def format_time(when: datetime) -> str:
    return when.astimezone(SHANGHAI).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=SHANGHAI)


# ------------------------------------------------------------------ pay modes

PAY_MODES = {
    "app": PayMode.MOBILE_BANK,  # 手机银行
    "web": PayMode.ONLINE_BANK,  # 网上银行
    "counter": PayMode.COUNTER,  # 柜面
    "ecny": PayMode.ECNY,  # 数字人民币 through the bank's wallet
}
"""The wire's `pay_mode` values. A message without one is PayMode.BANK (the bank did not
say); a value not listed is a parameter error (10002)."""


def pay_mode(wire: object) -> PayMode:
    """Our PayMode for a wire value; ValueError for one not in PAY_MODES."""
    if wire is None or wire == "":
        return PayMode.BANK
    try:
        return PAY_MODES[str(wire)]
    except KeyError:
        raise ValueError(f"unknown pay_mode {wire!r}") from None


# ------------------------------------------------------------------ status maps (pessimistic)

_TRADE_STATES = {
    "SUCCESS": TradeState.SUCCEEDED,
    "NOT_FOUND": TradeState.NOT_FOUND,
    "REVERSED": TradeState.CLOSED,  # 冲正: the bank undid the debit
    "CLOSED": TradeState.CLOSED,
    "WAITING": TradeState.PENDING,
}


def trade_state(bank_state: str) -> TradeState:
    """Unknown bank states are PENDING, never success."""
    return _TRADE_STATES.get(bank_state, TradeState.PENDING)


_REFUND_STATES = {
    "SUCCESS": RefundState.SUCCEEDED,
    "FAILED": RefundState.FAILED,
    "NOT_FOUND": RefundState.NOT_FOUND,
}


def refund_state(bank_state: str) -> RefundState:
    return _REFUND_STATES.get(bank_state, RefundState.PROCESSING)


# ------------------------------------------------------------------ statement (日终对账文件)

STATEMENT_COLUMNS = (
    "bank_serial",
    "order_id",
    "kind",
    "amount",
    "fee",
    "time",
    "refund_id",
    "payment_code",
)


def statement_csv(rows: Iterable[Mapping[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STATEMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in STATEMENT_COLUMNS})
    return buf.getvalue().encode()


def parse_statement(raw: bytes) -> list[StatementLine]:
    """Map columns by header name; refunds are negative amounts, as the bank gives them.

    `payment_code` (optional) names the bill a payment paid: a confirmation that never
    reached us, sent without a prior query, is known by nothing else."""
    lines: list[StatementLine] = []
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        kind = StatementKind.REFUND if row["kind"] == "REFUND" else StatementKind.PAYMENT
        lines.append(
            StatementLine(
                channel_trade_no=row["bank_serial"],
                attempt_id=row["order_id"],
                kind=kind,
                amount=yuan_to_fen(row["amount"]),
                fee=yuan_to_fen(row["fee"] or "0.00"),
                occurred_at=parse_time(row["time"]),
                refund_id=row["refund_id"] or None,
                payment_code=row.get("payment_code") or None,
            )
        )
    return lines
