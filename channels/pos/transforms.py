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
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from channels.base import (
    BATCH_KINDS,
    BatchLine,
    BatchSettlement,
    CardInquiry,
    CardRefund,
    CardReversal,
    CardSale,
    CardVoid,
    CountTotal,
    Disposition,
    InboundAnswer,
    InboundRequest,
    InvalidNotification,
    Outcome,
)
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = [
    "BATCH_MISMATCH",
    "CODES",
    "CURRENCY_CNY",
    "MAX_SKEW_S",
    "MERCHANT",
    "MESSAGES",
    "SHANGHAI",
    "TERMINAL",
    "TOTAL_KINDS",
    "Detail",
    "Identity",
    "Inquiry",
    "MalformedMessage",
    "Message",
    "Operation",
    "Refund",
    "Reversal",
    "Sale",
    "Settle",
    "Total",
    "Void",
    "answer_doc",
    "canonical",
    "claimed_identity",
    "code_of",
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


CODES: Mapping[Outcome, str] = {
    Outcome.OK: "00",
    Outcome.UNKNOWN_SENDER: "03",
    Outcome.NOT_ALLOWED: "12",
    Outcome.TOO_LATE: "12",
    Outcome.AMOUNT_DIFFERS: "13",
    Outcome.NOT_CONFIRMED: "25",
    Outcome.BAD_REQUEST: "30",
    Outcome.BAD_PARAMETER: "30",
    Outcome.NOT_QUERIED: "30",
    Outcome.EXPIRED: "57",
    Outcome.CANCELLED: "57",
    Outcome.DUPLICATE: "94",
    Outcome.TRY_LATER: "96",
    Outcome.FORGED: "A0",
    Outcome.UNKNOWN_CODE: "B1",
    Outcome.CHECK_FAILED: "B1",
    Outcome.UNKNOWN_ORDER: "B1",
    Outcome.ALREADY_PAID: "B2",
    Outcome.REVERSED: "B3",
    # A bank's day-end check and versions: a terminal's messages never lead to them.
    Outcome.UNSUPPORTED_VERSION: "30",
    Outcome.SENT_TWICE: "94",
    Outcome.CHECK_DIFFERS: "95",
}
"""Every outcome's code on the wire (the protocol's own, docs/channels/pos.md)."""
BATCH_MISMATCH = "95"
"""A settled batch whose totals differ (an OK settlement with `balanced` false)."""
MESSAGES: Mapping[str, str] = {
    "00": "approved",
    "03": "unknown or disabled terminal",
    "12": "transaction not allowed now",
    "13": "amount differs",
    "25": "original transaction not found",
    "30": "format error",
    "57": "bill cannot be paid",
    "94": "trace number already used for another transaction",
    "95": "batch totals differ",
    "96": "system error, reverse and retry",
    "A0": "signature check failed",
    "B1": "unknown payment code",
    "B2": "bill already paid",
    "B3": "transaction already reversed",
}
"""Our wording of each code; terminals branch on the code."""


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
    """A message that does not have the protocol's shape: answered 30, nothing written."""


# The protocol's messages are these typed requests of channels.base (amounts in fen).
Inquiry = CardInquiry
Sale = CardSale
Reversal = CardReversal
Void = CardVoid
Refund = CardRefund
Total = CountTotal
Detail = BatchLine
Settle = BatchSettlement
TOTAL_KINDS = BATCH_KINDS
Message = CardInquiry | CardSale | CardReversal | CardVoid | CardRefund | BatchSettlement


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


# ------------------------------------------------------------------ answers


def _totals_doc(totals: Mapping[str, CountTotal]) -> dict[str, Any]:
    return {
        k.lower(): {"count": t.count, "amount": fen_to_yuan(t.amount)} for k, t in totals.items()
    }


def _yuan_or_none(fen: int | None) -> str | None:
    return None if fen is None else fen_to_yuan(fen)


def code_of(answer: InboundAnswer) -> str:
    if answer.outcome == Outcome.OK and answer.batch is not None and not answer.batch.balanced:
        return BATCH_MISMATCH
    # An outcome added to the seam after this table: a system error, never a crash.
    return CODES.get(answer.outcome, "96")


def answer_doc(answer: InboundAnswer, request: InboundRequest | None) -> dict[str, Any]:
    """Our typed answer in the protocol's words (yuan strings, result codes)."""
    code = code_of(answer)
    data: dict[str, Any] | None = None
    if answer.bill is not None:
        b = answer.bill
        data = {
            "payment_code": b.payment_code,
            "agency_name": b.agency_name,
            "payer_name": b.payer_name,
            "amount": fen_to_yuan(b.amount),
            "principal": fen_to_yuan(b.principal),
            "late_fee": fen_to_yuan(b.late_fee),
            "due_date": b.due_date.isoformat(),
            "items": [{"name": li.name, "amount": fen_to_yuan(li.amount)} for li in b.lines],
        }
    elif answer.batch is not None:
        c = answer.batch
        data = {
            "batch_no": c.batch_no,
            "balanced": c.balanced,
            "host_totals": _totals_doc(c.ours),
            "terminal_totals": _totals_doc(c.theirs),
            "differences": [
                {
                    "kind": x["kind"],
                    "trace_no": x["trace_no"],
                    "terminal_amount": _yuan_or_none(x.get("terminal_amount")),
                    "host_amount": _yuan_or_none(x.get("our_amount")),
                }
                for x in c.differences
            ],
        }
    elif (
        isinstance(request, CardSale)
        and answer.receipt is not None
        and answer.receipt.disposition == Disposition.REFUND
    ):
        # B2 for a sale recorded as a duplicate: refunded through the acquirer, not reversed.
        data = {
            "batch_no": request.batch_no,
            "trace_no": request.trace_no,
            "receipt_id": answer.receipt.receipt_id,
            "disposition": Disposition.REFUND.value,
        }
    elif code == "00" and isinstance(request, CardSale | CardReversal | CardVoid | CardRefund):
        after = {CardSale: "PAID", CardReversal: "ISSUED", CardVoid: "ISSUED"}
        data = {
            "batch_no": request.batch_no,
            "trace_no": request.trace_no,
            "receipt_id": answer.receipt.receipt_id if answer.receipt else None,
            "bill_status": after.get(type(request)),
        }
    return {"code": code, "msg": answer.detail or MESSAGES[code], "data": data}


def render(answer: InboundAnswer, request: InboundRequest | None) -> bytes:
    doc = answer_doc(answer, request)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def format_time(when: datetime) -> str:
    return when.astimezone(SHANGHAI).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=SHANGHAI)


def trade_no(terminal: str, batch_no: str, trace_no: str) -> str:
    """Our channel trade number of a terminal transaction (unique per terminal)."""
    return f"{terminal}{batch_no}{trace_no}"
