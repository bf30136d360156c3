"""Pure transforms of the MIS-POS terminal protocol: signing, message shapes, result codes.

The protocol is documented for terminal vendors in docs/channels/pos.md. In short: the
terminal POSTs UTF-8 JSON to `/v1/channels/pos/<operation>` with the headers
`X-Pos-Merchant` (15 digits), `X-Pos-Terminal` (8), `X-Pos-Timestamp` (unix seconds),
`X-Pos-Nonce` (16-64 of [0-9A-Za-z], used once) and `X-Pos-Signature`, the lowercase hex
HMAC-SHA256 with the terminal's own key over

    "<METHOD>\\n<path>\\n<merchant>\\n<terminal>\\n<timestamp>\\n<nonce>\\n<hex sha256 of body>"

The answer is signed the same way with METHOD "RESPONSE" (the request's path, our own
timestamp and nonce). Amounts are yuan strings with two decimals, times Beijing time
`yyyy-MM-dd HH:mm:ss`. No I/O here: the simulator and the service share these functions,
and fixed test vectors keep a mistake mirrored in both from hiding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from channels.base import InvalidNotification
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = [
    "CODES",
    "CURRENCY_CNY",
    "MAX_SKEW_S",
    "MERCHANT",
    "MESSAGES",
    "SHANGHAI",
    "TERMINAL",
    "TOTAL_KINDS",
    "Accepted",
    "Answer",
    "BatchReport",
    "BillInfo",
    "Detail",
    "Identity",
    "Inquiry",
    "MalformedMessage",
    "Message",
    "Operation",
    "Refund",
    "Result",
    "Reversal",
    "Sale",
    "Settle",
    "Total",
    "Void",
    "answer_doc",
    "canonical",
    "claimed_identity",
    "digest",
    "format_time",
    "mac",
    "parse",
    "parse_time",
    "render",
    "sign",
    "trade_no",
    "verify",
]

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_SKEW_S = 300

H_MERCHANT = "x-pos-merchant"
H_TERMINAL = "x-pos-terminal"
H_TS = "x-pos-timestamp"
H_NONCE = "x-pos-nonce"
H_SIG = "x-pos-signature"

MERCHANT = re.compile(r"^[0-9]{15}$")
TERMINAL = re.compile(r"^[0-9A-Z]{8}$")
_NONCE = re.compile(r"^[0-9A-Za-z]{16,64}$")
_SIX = re.compile(r"^[0-9]{6}$")
_RRN = re.compile(r"^[0-9A-Za-z]{12}$")
_CARD = re.compile(r"^[0-9]{6}\*{3,9}[0-9]{4}$")
_MMDD = re.compile(r"^(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])$")
_INSTITUTION = re.compile(r"^[0-9]{4,11}$")
CURRENCY_CNY = "156"


class Operation(StrEnum):
    INQUIRY = "inquiry"
    SALE = "sale"
    VOID = "void"
    REFUND = "refund"
    REVERSAL = "reversal"
    SETTLE = "settle"


class Result(StrEnum):
    """Our typed answer; `CODES` gives each its code on the wire."""

    APPROVED = "APPROVED"
    UNKNOWN_TERMINAL = "UNKNOWN_TERMINAL"
    NOT_ALLOWED = "NOT_ALLOWED"
    AMOUNT_DIFFERS = "AMOUNT_DIFFERS"
    ORIGINAL_NOT_FOUND = "ORIGINAL_NOT_FOUND"
    FORMAT_ERROR = "FORMAT_ERROR"
    BILL_NOT_PAYABLE = "BILL_NOT_PAYABLE"
    CONFLICTING_REPEAT = "CONFLICTING_REPEAT"
    BATCH_MISMATCH = "BATCH_MISMATCH"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    ALREADY_PAID = "ALREADY_PAID"
    REVERSED = "REVERSED"


CODES: Mapping[Result, str] = {
    Result.APPROVED: "00",
    Result.UNKNOWN_TERMINAL: "03",
    Result.NOT_ALLOWED: "12",
    Result.AMOUNT_DIFFERS: "13",
    Result.ORIGINAL_NOT_FOUND: "25",
    Result.FORMAT_ERROR: "30",
    Result.BILL_NOT_PAYABLE: "57",
    Result.CONFLICTING_REPEAT: "94",
    Result.BATCH_MISMATCH: "95",
    Result.SYSTEM_ERROR: "96",
    Result.BAD_SIGNATURE: "A0",
    Result.UNKNOWN_CODE: "B1",
    Result.ALREADY_PAID: "B2",
    Result.REVERSED: "B3",
}
MESSAGES: Mapping[Result, str] = {
    Result.APPROVED: "approved",
    Result.UNKNOWN_TERMINAL: "unknown or disabled terminal",
    Result.NOT_ALLOWED: "transaction not allowed now",
    Result.AMOUNT_DIFFERS: "amount differs",
    Result.ORIGINAL_NOT_FOUND: "original transaction not found",
    Result.FORMAT_ERROR: "format error",
    Result.BILL_NOT_PAYABLE: "bill cannot be paid",
    Result.CONFLICTING_REPEAT: "trace number already used for another transaction",
    Result.BATCH_MISMATCH: "batch totals differ",
    Result.SYSTEM_ERROR: "system error, reverse and retry",
    Result.BAD_SIGNATURE: "signature check failed",
    Result.UNKNOWN_CODE: "unknown payment code",
    Result.ALREADY_PAID: "bill already paid",
    Result.REVERSED: "transaction already reversed",
}
"""Our wording of each result; terminals branch on the code."""


# ------------------------------------------------------------------ signing


def canonical(  # noqa: PLR0917 - the canonical string's parts, in order
    method: str, path: str, merchant: str, terminal: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return (
        f"{method.upper()}\n{path}\n{merchant}\n{terminal}\n{timestamp}\n{nonce}\n{digest}".encode()
    )


def mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(  # noqa: PLR0917 - the canonical string's parts, in order
    key: bytes,
    method: str,
    path: str,
    merchant: str,
    terminal: str,
    body: bytes,
    *,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that sign `body` for `method path` (now and a fresh nonce, unless given)."""
    ts = timestamp or str(int(time.time()))
    nonce = nonce or secrets.token_hex(12)
    return {
        "X-Pos-Merchant": merchant,
        "X-Pos-Terminal": terminal,
        "X-Pos-Timestamp": ts,
        "X-Pos-Nonce": nonce,
        "X-Pos-Signature": mac(key, canonical(method, path, merchant, terminal, ts, nonce, body)),
    }


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a message says it is from, before the signature is checked."""

    merchant: str
    terminal: str


def claimed_identity(headers: Mapping[str, str]) -> Identity:
    """The merchant and terminal ids a message claims; `headers` case-insensitive or
    lowercased."""
    merchant = headers.get(H_MERCHANT, "")
    terminal = headers.get(H_TERMINAL, "")
    if not (MERCHANT.match(merchant) and TERMINAL.match(terminal)):
        raise InvalidNotification("merchant or terminal id missing or malformed", code="identity")
    return Identity(merchant, terminal)


def verify(
    key: bytes,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
) -> str:
    """Check the signature and the timestamp window; return the nonce (reuse is the
    caller's to refuse)."""
    who = claimed_identity(headers)
    ts = headers.get(H_TS, "")
    nonce = headers.get(H_NONCE, "")
    got = headers.get(H_SIG, "")
    if not (ts.isdigit() and _NONCE.match(nonce) and got):
        raise InvalidNotification("signature headers missing", code="signature_missing")
    if abs((now if now is not None else time.time()) - int(ts)) > MAX_SKEW_S:
        raise InvalidNotification("timestamp outside the window", code="timestamp")
    want = mac(key, canonical(method, path, who.merchant, who.terminal, ts, nonce, body))
    if not hmac.compare_digest(want, got.lower()):
        raise InvalidNotification("bad signature", code="signature")
    return nonce


# ------------------------------------------------------------------ typed messages (in fen)


class MalformedMessage(ValueError):
    """A message that does not have the protocol's shape: FORMAT_ERROR, nothing written."""


@dataclass(frozen=True, slots=True)
class Inquiry:
    payment_code: str


@dataclass(frozen=True, slots=True)
class Sale:
    payment_code: str
    amount: int
    batch_no: str
    trace_no: str
    rrn: str
    card: str
    card_type: str
    acquirer: str
    issuer: str
    occurred_at: datetime
    settle_date: str
    operator: str


@dataclass(frozen=True, slots=True)
class Reversal:
    """Cancels the sale with this batch and trace number (the terminal had no answer)."""

    batch_no: str
    trace_no: str
    amount: int
    payment_code: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Void:
    """撤销: cancels a sale of the same, unsettled batch; has its own trace number."""

    batch_no: str
    trace_no: str
    original_trace_no: str
    amount: int
    rrn: str
    occurred_at: datetime
    operator: str


@dataclass(frozen=True, slots=True)
class Refund:
    """退货: gives back (part of) a sale of a settled batch; the acquirer returns the money."""

    batch_no: str
    trace_no: str
    original_batch_no: str
    original_trace_no: str
    amount: int
    rrn: str
    occurred_at: datetime
    operator: str


@dataclass(frozen=True, slots=True)
class Total:
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class Detail:
    kind: str
    """SALE, VOID or REFUND."""
    trace_no: str
    amount: int


TOTAL_KINDS = ("SALE", "VOID", "REFUND")


@dataclass(frozen=True, slots=True)
class Settle:
    """批结算: the terminal's counts and totals per kind for one batch, and its lines."""

    batch_no: str
    totals: Mapping[str, Total]
    details: tuple[Detail, ...]


Message = Inquiry | Sale | Reversal | Void | Refund | Settle


def _text(doc: Mapping[str, Any], name: str, shape: re.Pattern[str] | None = None) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or (shape is not None and not shape.match(value)):
        raise MalformedMessage(f"{name} missing or malformed")
    return value


def _amount(doc: Mapping[str, Any], name: str = "amount") -> int:
    try:
        fen = yuan_to_fen(_text(doc, name))
    except ValueError:
        raise MalformedMessage(f"{name} is not a yuan amount") from None
    if fen <= 0:
        raise MalformedMessage(f"{name} must be positive")
    return fen


def _time(doc: Mapping[str, Any], name: str = "time") -> datetime:
    try:
        return parse_time(_text(doc, name))
    except ValueError:
        raise MalformedMessage(f"{name} is not yyyy-MM-dd HH:mm:ss") from None


def _short(doc: Mapping[str, Any], name: str, limit: int) -> str:
    value = _text(doc, name)
    if not 0 < len(value) <= limit:
        raise MalformedMessage(f"{name} must be 1..{limit} characters")
    return value


def parse(operation: Operation, body: bytes) -> Message:
    """A verified body as our typed message; MalformedMessage for anything off-shape."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise MalformedMessage("body is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("body is not a JSON object")
    if operation == Operation.INQUIRY:
        return Inquiry(_short(doc, "payment_code", 32))
    if operation == Operation.SALE:
        if doc.get("currency", CURRENCY_CNY) != CURRENCY_CNY:
            raise MalformedMessage("currency must be 156 (CNY)")
        return Sale(
            payment_code=_short(doc, "payment_code", 32),
            amount=_amount(doc),
            batch_no=_text(doc, "batch_no", _SIX),
            trace_no=_text(doc, "trace_no", _SIX),
            rrn=_text(doc, "rrn", _RRN),
            card=_text(doc, "card", _CARD),
            card_type=_short(doc, "card_type", 8),
            acquirer=_text(doc, "acquirer", _INSTITUTION),
            issuer=_text(doc, "issuer", _INSTITUTION),
            occurred_at=_time(doc),
            settle_date=_text(doc, "settle_date", _MMDD),
            operator=_short(doc, "operator", 16),
        )
    if operation == Operation.REVERSAL:
        return Reversal(
            batch_no=_text(doc, "batch_no", _SIX),
            trace_no=_text(doc, "trace_no", _SIX),
            amount=_amount(doc),
            payment_code=_short(doc, "payment_code", 32),
            occurred_at=_time(doc),
        )
    if operation == Operation.VOID:
        return Void(
            batch_no=_text(doc, "batch_no", _SIX),
            trace_no=_text(doc, "trace_no", _SIX),
            original_trace_no=_text(doc, "original_trace_no", _SIX),
            amount=_amount(doc),
            rrn=_text(doc, "rrn", _RRN),
            occurred_at=_time(doc),
            operator=_short(doc, "operator", 16),
        )
    if operation == Operation.REFUND:
        return Refund(
            batch_no=_text(doc, "batch_no", _SIX),
            trace_no=_text(doc, "trace_no", _SIX),
            original_batch_no=_text(doc, "original_batch_no", _SIX),
            original_trace_no=_text(doc, "original_trace_no", _SIX),
            amount=_amount(doc),
            rrn=_text(doc, "rrn", _RRN),
            occurred_at=_time(doc),
            operator=_short(doc, "operator", 16),
        )
    return _parse_settle(doc)


def _count(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedMessage(f"{name} must be a count")
    return value


def _parse_settle(doc: Mapping[str, Any]) -> Settle:
    totals_doc = doc.get("totals")
    details_doc = doc.get("details")
    if not isinstance(totals_doc, dict) or not isinstance(details_doc, list):
        raise MalformedMessage("totals must be an object and details a list")
    totals: dict[str, Total] = {}
    for kind in TOTAL_KINDS:
        t = totals_doc.get(kind.lower(), {"count": 0, "amount": "0.00"})
        if not isinstance(t, dict):
            raise MalformedMessage(f"totals.{kind.lower()} must be an object")
        try:
            amount = yuan_to_fen(_text(t, "amount"))
        except ValueError:
            raise MalformedMessage(f"totals.{kind.lower()}.amount is not yuan") from None
        totals[kind] = Total(_count(t, "count"), amount)
    details = []
    for d in details_doc:
        if not isinstance(d, dict) or str(d.get("kind", "")).upper() not in TOTAL_KINDS:
            raise MalformedMessage("each detail needs kind SALE, VOID or REFUND")
        details.append(Detail(str(d["kind"]).upper(), _text(d, "trace_no", _SIX), _amount(d)))
    return Settle(_text(doc, "batch_no", _SIX), totals, tuple(details))


def digest(message: Message) -> str:
    """The business fields of a message, hashed: an identical repeat has the same digest."""
    fields = {k: getattr(message, k) for k in message.__slots__}
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()


# ------------------------------------------------------------------ typed answers


@dataclass(frozen=True, slots=True)
class BillInfo:
    """An inquiry's answer: what the counter clerk shows before swiping the card."""

    payment_code: str
    agency_name: str
    payer_name: str
    """Masked."""
    amount: int
    principal: int
    late_fee: int
    due_date: date
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A sale, void, refund or reversal taken (or a repeat of one)."""

    batch_no: str
    trace_no: str
    receipt_id: str | None = None
    bill_status: str | None = None


@dataclass(frozen=True, slots=True)
class BatchReport:
    batch_no: str
    balanced: bool
    ours: Mapping[str, Total]
    theirs: Mapping[str, Total]
    differences: tuple[Mapping[str, Any], ...]
    """Each: kind, trace_no, terminal_amount (None: only ours has it), our_amount."""


@dataclass(frozen=True, slots=True)
class Answer:
    result: Result
    detail: BillInfo | Accepted | BatchReport | None = None
    message: str | None = None


def _totals_doc(totals: Mapping[str, Total]) -> dict[str, Any]:
    return {
        k.lower(): {"count": t.count, "amount": fen_to_yuan(t.amount)} for k, t in totals.items()
    }


def answer_doc(answer: Answer) -> dict[str, Any]:
    """Our typed answer in the protocol's words (yuan strings, result codes)."""
    data: dict[str, Any] | None = None
    d = answer.detail
    if isinstance(d, BillInfo):
        data = {
            "payment_code": d.payment_code,
            "agency_name": d.agency_name,
            "payer_name": d.payer_name,
            "amount": fen_to_yuan(d.amount),
            "principal": fen_to_yuan(d.principal),
            "late_fee": fen_to_yuan(d.late_fee),
            "due_date": d.due_date.isoformat(),
            "items": [{"name": n, "amount": fen_to_yuan(a)} for n, a in d.items],
        }
    elif isinstance(d, Accepted):
        data = {
            "batch_no": d.batch_no,
            "trace_no": d.trace_no,
            "receipt_id": d.receipt_id,
            "bill_status": d.bill_status,
        }
    elif isinstance(d, BatchReport):
        data = {
            "batch_no": d.batch_no,
            "balanced": d.balanced,
            "host_totals": _totals_doc(d.ours),
            "terminal_totals": _totals_doc(d.theirs),
            "differences": [
                {
                    "kind": x["kind"],
                    "trace_no": x["trace_no"],
                    "terminal_amount": _yuan_or_none(x.get("terminal_amount")),
                    "host_amount": _yuan_or_none(x.get("our_amount")),
                }
                for x in d.differences
            ],
        }
    return {
        "code": CODES[answer.result],
        "msg": answer.message or MESSAGES[answer.result],
        "data": data,
    }


def _yuan_or_none(fen: int | None) -> str | None:
    return None if fen is None else fen_to_yuan(fen)


def render(answer: Answer) -> bytes:
    return json.dumps(answer_doc(answer), separators=(",", ":"), ensure_ascii=False).encode()


def format_time(when: datetime) -> str:
    return when.astimezone(SHANGHAI).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=SHANGHAI)


def trade_no(terminal: str, batch_no: str, trace_no: str) -> str:
    """Our channel trade number of a terminal transaction (unique per terminal)."""
    return f"{terminal}{batch_no}{trace_no}"
