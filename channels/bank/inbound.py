"""The banks' half of the inbound seam: their wire messages to our typed requests, our
typed answers to their result codes, signed.

A bank calls `POST /v1/channels/bank/<code>/<operation>` (query, confirm, reverse,
daycheck). Everything of
its wire — field names, yuan strings, Beijing-time text, result codes, signatures — is read
and written here and in `transforms`; the payment service sees only `channels.base` values.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any, Protocol

from channels.bank import transforms as t
from channels.bank.registry import BankEntry
from channels.base import (
    BadMessage,
    BadParameter,
    BillQuery,
    CheckedPayment,
    ConfirmationReceipt,
    ConfirmPayment,
    DayEndCheck,
    Finding,
    FindingKind,
    InboundAnswer,
    InboundCall,
    InboundMessage,
    InboundRequest,
    Outcome,
    ReverseConfirmation,
    UnknownSender,
    UnsupportedVersion,
    WireReply,
)
from channels.money import fen_to_yuan, yuan_to_fen

__all__ = ["OPERATIONS", "RESULT_CODES", "BankInbound", "Banks", "decode", "encode"]

OPERATIONS = frozenset({"query", "confirm", "reverse", "daycheck"})
MAX_CHECK_LINES = 100_000

RESULT_CODES: Mapping[Outcome, str] = {
    Outcome.OK: t.ResultCode.OK,
    Outcome.UNKNOWN_CODE: t.ResultCode.UNKNOWN_CODE,
    Outcome.CHECK_FAILED: t.ResultCode.CHECK_FAILED,
    Outcome.EXPIRED: t.ResultCode.PAST_DEADLINE,
    Outcome.CANCELLED: t.ResultCode.CANCELLED,
    Outcome.ALREADY_PAID: t.ResultCode.ALREADY_PAID,
    Outcome.AMOUNT_DIFFERS: t.ResultCode.AMOUNT_DIFFERS,
    # The interface has no code of its own for an order id it does not know: the order
    # stands for the payment code, so it is answered as an unknown code.
    Outcome.UNKNOWN_ORDER: t.ResultCode.UNKNOWN_CODE,
    Outcome.DUPLICATE: t.ResultCode.DUPLICATE_CONFIRMATION,
    Outcome.NOT_QUERIED: t.ResultCode.NO_PRIOR_QUERY,
    Outcome.NOT_CONFIRMED: t.ResultCode.NOT_CONFIRMED,
    Outcome.TOO_LATE: t.ResultCode.REVERSAL_TOO_LATE,
    Outcome.TRY_LATER: t.ResultCode.TRY_LATER,
    Outcome.BAD_REQUEST: t.ResultCode.BAD_REQUEST,
    Outcome.BAD_PARAMETER: t.ResultCode.PARAMETER_ERROR,
    Outcome.UNSUPPORTED_VERSION: t.ResultCode.VERSION_ERROR,
    Outcome.SENT_TWICE: t.ResultCode.CHECK_SENT_TWICE,
    # The answer names the code of each finding; the first (lowest) code leads.
    Outcome.CHECK_DIFFERS: t.ResultCode.CHECK_AMOUNT_DIFFERS,
    Outcome.UNKNOWN_SENDER: t.ResultCode.UNKNOWN_BANK,
    Outcome.FORGED: t.ResultCode.BAD_SIGNATURE,
    # Card terminal outcomes; a bank's messages never lead to them.
    Outcome.REVERSED: t.ResultCode.DUPLICATE_CONFIRMATION,
    Outcome.NOT_ALLOWED: t.ResultCode.BAD_REQUEST,
}
"""Every outcome has its code (a test checks the map is total)."""


FINDING_CODES: Mapping[FindingKind, str] = {
    FindingKind.AMOUNT_DIFFERS: t.ResultCode.CHECK_AMOUNT_DIFFERS,
    FindingKind.MISSING_AT_DAY_END: t.ResultCode.CHECK_MISSING_AT_DAY_END,
    FindingKind.MISSING_INTRADAY: t.ResultCode.CHECK_MISSING_INTRADAY,
}


def decode(operation: str, msg: Mapping[str, Any], raw: bytes = b"") -> InboundRequest:
    """A verified message body (a JSON object) as our typed request; BadMessage if malformed,
    UnsupportedVersion for a `version` we do not speak."""
    version = msg.get("version", "1.0")
    if version not in t.VERSIONS:
        raise UnsupportedVersion(f"version {version!r} not supported", code="version")
    if operation == "query":
        return BillQuery(payment_code=str(msg.get("payment_code", "")))
    if operation == "confirm":
        return _confirm(msg)
    if operation == "reverse":
        return _reverse(msg)
    if operation == "daycheck":
        return _daycheck(msg, raw)
    raise BadMessage(f"no bank operation {operation!r}", code="operation")


def _reverse(msg: Mapping[str, Any]) -> ReverseConfirmation:
    try:
        request = ReverseConfirmation(
            payment_code=str(msg["payment_code"]),
            reference=str(msg["bank_serial"]),
            amount=yuan_to_fen(str(msg["amount"])),
            reason=str(msg.get("reason") or "")[:200],
        )
    except (KeyError, ValueError) as exc:
        raise BadMessage("malformed reversal", code="reversal") from exc
    if not request.reference or len(request.reference) > 64 or request.amount <= 0:
        raise BadMessage("malformed reversal", code="reversal")
    return request


def _daycheck(msg: Mapping[str, Any], raw: bytes) -> DayEndCheck:
    try:
        day = date.fromisoformat(str(msg["date"]))
        payments = msg["payments"]
        if not isinstance(payments, list) or len(payments) > MAX_CHECK_LINES:
            raise TypeError
        lines = tuple(
            CheckedPayment(str(p["bank_serial"]), yuan_to_fen(str(p["amount"]))) for p in payments
        )
        count, total = int(msg["count"]), yuan_to_fen(str(msg["total"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise BadMessage("malformed day-end check", code="daycheck") from exc
    if count != len(lines) or total != sum(line.amount for line in lines):
        raise BadParameter("count or total is not the lines'", code="daycheck_totals")
    return DayEndCheck(business_date=day, lines=lines, raw=raw)


def _confirm(msg: Mapping[str, Any]) -> ConfirmPayment:
    try:
        order = msg.get("order_id")
        code = str(msg["payment_code"])
        serial = str(msg["bank_serial"])
        amount = yuan_to_fen(str(msg["amount"]))
        paid_at = t.parse_time(str(msg["paid_at"]))
        order_id = str(uuid.UUID(str(order))) if order else None
    except (KeyError, ValueError) as exc:
        raise BadMessage("malformed confirmation", code="confirmation") from exc
    try:
        pay_mode = t.pay_mode(msg.get("pay_mode"))
    except ValueError as exc:
        raise BadParameter("unknown pay_mode", code="pay_mode") from exc
    request = ConfirmPayment(code, serial, amount, paid_at, order_id, pay_mode)
    if not request.reference or len(request.reference) > 64 or request.amount <= 0:
        raise BadMessage("malformed confirmation", code="confirmation")
    return request


def encode(answer: InboundAnswer) -> t.BankAnswer:
    """Our answer as the bank's document (before signing)."""
    code = RESULT_CODES[answer.outcome]
    if answer.findings:
        return t.BankAnswer(
            min(FINDING_CODES[f.kind] for f in answer.findings),
            answer.detail or "day-end check differs",
            {"mismatches": [_finding_doc(f) for f in answer.findings]},
        )
    if answer.outcome != Outcome.OK:
        return t.BankAnswer(code, answer.detail or answer.outcome.lower())
    data: dict[str, Any] | None = None
    if answer.bill is not None:
        data = answer.bill.doc(t.format_time)
    elif answer.receipt is not None:
        data = _receipt_doc(answer.receipt)
    return t.BankAnswer(code, "ok", data)


def _finding_doc(finding: Finding) -> dict[str, Any]:
    return {
        "bank_serial": finding.reference,
        "code": FINDING_CODES[finding.kind],
        "our_amount": None if finding.ours is None else fen_to_yuan(finding.ours),
        "bank_amount": None if finding.theirs is None else fen_to_yuan(finding.theirs),
    }


def _receipt_doc(receipt: ConfirmationReceipt) -> dict[str, Any]:
    return {
        "order_id": receipt.order_id,
        "bank_serial": receipt.reference,
        "receipt_id": receipt.receipt_id,
        "disposition": receipt.disposition.value,
    }


class Banks(Protocol):
    """Where the adapter finds a bank's keys (channels.bank.registry.BankDirectory)."""

    async def get(self, code: str) -> BankEntry | None:
        """The bank if it is registered and enabled, else None."""
        ...


class BankInbound:
    """The banks' inbound adapter, registered as `bank`: one bank per URL member
    (`/v1/channels/bank/<code>/<operation>`), its payments recorded as `bank:<code>`, each
    verified and signed with its own registered keys (HMAC-SHA256 or SM2 with SM3)."""

    name = "bank"
    operations = OPERATIONS

    def __init__(self, banks: Banks) -> None:
        self._banks = banks

    async def has_member(self, member: str) -> bool:
        return await self._banks.get(member) is not None

    async def parse(self, call: InboundCall) -> InboundMessage:
        return await self.parse_at(call, None)

    async def parse_at(self, call: InboundCall, now: float | None) -> InboundMessage:
        """`parse` as if at unix time `now` (tests)."""
        entry = await self._banks.get(call.member or "")
        if entry is None:  # disabled since the route looked
            raise UnknownSender("no such bank", code="bank")
        verified = t.verify(
            entry.signing, entry.code, "POST", call.path, call.headers, call.body, now=now
        )
        try:
            msg = json.loads(call.body)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            raise BadMessage("body is not a JSON object", code="json")
        return InboundMessage(
            t.channel_name(entry.code), decode(call.operation, msg, call.body), nonce=verified.nonce
        )

    async def render(
        self, call: InboundCall, message: InboundMessage | None, answer: InboundAnswer
    ) -> WireReply:
        del message  # one key per bank: every answer is signed with it
        out = json.dumps(encode(answer).doc(), separators=(",", ":"), ensure_ascii=False).encode()
        entry = await self._banks.get(call.member or "")
        if entry is None:  # disabled meanwhile: nothing to sign with; the bank distrusts it
            return WireReply(out, media_type="application/json")
        # Every answer is signed, a refusal of a forged message too: the bank trusts only
        # signed answers, and signing reveals nothing the forger did not send.
        headers = t.sign(entry.signing, "RESPONSE", call.path, out, entry.code)
        headers.pop("Content-Type", None)
        return WireReply(out, media_type="application/json", headers=headers)
