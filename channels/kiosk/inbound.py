"""The kiosks' half of the inbound seam: their signed messages to our typed requests, our
typed answers to their result codes, signed for the device.

A kiosk calls `POST /v1/channels/kiosk/<operation>` (docs/channels/kiosk.md). Its query is
the seam's BillQuery; its confirmation a ConfirmPayment carrying the device's sequence
number (KioskConfirm adds what the printed slip needs); its upload, reprint and heartbeat
are the kiosk's own requests, answered by the kiosk service (kiosks.kiosk) through the
seam's handler registry. Wire names, yuan strings, result codes and signatures stay here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from channels.base import (
    BadMessage,
    BillQuery,
    ConfirmPayment,
    InboundAnswer,
    InboundCall,
    InboundMessage,
    InboundRequest,
    InvalidNotification,
    Outcome,
    PayMode,
    UnknownSender,
    WireReply,
)
from channels.kiosk import transforms as t
from channels.kiosk.adapter import NAME

__all__ = [
    "NAME",
    "RESULT_CODES",
    "DeviceEntry",
    "Devices",
    "Heartbeat",
    "KioskAnswer",
    "KioskConfirm",
    "KioskInbound",
    "KioskUpload",
    "Reprint",
]


RESULT_CODES: Mapping[Outcome, tuple[str, str]] = {
    Outcome.OK: (t.ResultCode.OK, "ok"),
    Outcome.UNKNOWN_CODE: (t.ResultCode.UNKNOWN_CODE, "unknown payment code"),
    Outcome.CHECK_FAILED: (t.ResultCode.CHECK_FAILED, "payment code check failed"),
    Outcome.EXPIRED: (t.ResultCode.PAST_DEADLINE, "past the payment deadline"),
    Outcome.CANCELLED: (t.ResultCode.CANCELLED, "bill cancelled"),
    Outcome.ALREADY_PAID: (t.ResultCode.ALREADY_PAID, "bill already paid"),
    Outcome.DUPLICATE: (t.ResultCode.CONFLICT, "conflicts with a recorded confirmation"),
    Outcome.AMOUNT_DIFFERS: (t.ResultCode.AMOUNT_DIFFERS, "amount differs from the amount due"),
    Outcome.UNKNOWN_ORDER: (t.ResultCode.UNKNOWN_ORDER, "unknown order"),
    # The kiosk reverses with its acquirer, never with us; what the seam calls "no such
    # confirmation" is, for a kiosk, a reprint of a number with no receipt.
    Outcome.NOT_CONFIRMED: (t.ResultCode.UNKNOWN_SEQ, "no receipt for this sequence number"),
    Outcome.NOT_QUERIED: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.TOO_LATE: (t.ResultCode.BAD_REQUEST, "malformed message"),
    # Card-terminal outcomes (a reversal or void): a kiosk never asks for them.
    Outcome.REVERSED: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.NOT_ALLOWED: (t.ResultCode.BAD_REQUEST, "malformed message"),
    # Bank interface outcomes (version, day-end check): a kiosk never meets them.
    Outcome.UNSUPPORTED_VERSION: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.SENT_TWICE: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.CHECK_DIFFERS: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.TRY_LATER: (t.ResultCode.TRY_LATER, "try again later"),
    Outcome.BAD_REQUEST: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.BAD_PARAMETER: (t.ResultCode.BAD_REQUEST, "malformed message"),
    Outcome.UNKNOWN_SENDER: (t.ResultCode.UNKNOWN_DEVICE, "unknown or disabled device"),
    Outcome.FORGED: (t.ResultCode.BAD_SIGNATURE, "signature check failed, stale or replayed"),
}
_UNMAPPED = (t.ResultCode.BAD_REQUEST, "malformed message")
"""An outcome added to the seam after this table (tests/test_kiosk_protocol.py insists on
an entry for every one)."""


def _code(outcome: Outcome) -> tuple[str, str]:
    return RESULT_CODES.get(outcome, _UNMAPPED)


# ------------------------------------------------------------------ the kiosk's own requests


@dataclass(frozen=True, slots=True)
class KioskConfirm(ConfirmPayment):
    """A kiosk's confirmation: the seam's ConfirmPayment (reference = the acquirer's
    reference, sequence = the device's number) and what the slip prints."""

    method: str = "CARD"
    card: str | None = None
    digest: bytes = b""
    """The facts a repeat of this sequence number must match (transforms.Confirm.digest)."""


@dataclass(frozen=True, slots=True)
class KioskUpload(InboundRequest):
    """Stored confirmations, forwarded (store and forward)."""

    items: tuple[KioskConfirm, ...]


@dataclass(frozen=True, slots=True)
class Reprint(InboundRequest):
    sequence: int


@dataclass(frozen=True, slots=True)
class Heartbeat(InboundRequest):
    last_sequence: int
    status: str


@dataclass(frozen=True, slots=True)
class KioskAnswer(InboundAnswer):
    """The seam's answer and what only a kiosk gets: the slip to print, the sequence
    numbers still missing, the platform's time."""

    slip: t.Slip | None = None
    missing: tuple[tuple[int, int], ...] = ()
    server_time: datetime | None = None


# ------------------------------------------------------------------ the devices


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device_id: str
    key: t.DeviceKey
    enabled: bool


class Devices(Protocol):
    """The registered kiosks (the registry lives with the kiosk service)."""

    async def get(self, device_id: str) -> DeviceEntry | None: ...


class AnswerSigner(Protocol):
    """The platform's SM2 key (what answers to SM2 devices are signed with)."""

    def sign(self, message: bytes) -> bytes: ...


# ------------------------------------------------------------------ the adapter


def _confirm(c: t.Confirm) -> KioskConfirm:
    return KioskConfirm(
        payment_code=c.payment_code,
        reference=c.acquirer_ref,
        amount=c.amount,
        paid_at=c.paid_at,
        order_id=str(c.order_id) if c.order_id else None,
        pay_mode=PayMode.KIOSK,
        sequence=c.seq,
        method=c.method,
        card=c.card,
        digest=c.digest(),
    )


def decode(message: t.Message) -> InboundRequest:
    if isinstance(message, t.Query):
        return BillQuery(message.payment_code)
    if isinstance(message, t.Confirm):
        return _confirm(message)
    if isinstance(message, t.Upload):
        return KioskUpload(tuple(_confirm(c) for c in message.confirmations))
    if isinstance(message, t.Reprint):
        return Reprint(message.seq)
    return Heartbeat(message.last_seq, message.status)


class KioskInbound:
    """Every kiosk, one inbound channel: `kiosk`."""

    name = NAME
    operations = frozenset(t.OPERATIONS)

    def __init__(self, devices: Devices, platform_signer: AnswerSigner) -> None:
        self._devices = devices
        self._signer = platform_signer

    async def has_member(self, member: str) -> bool:
        del member  # a kiosk names itself in its headers, not in the URL
        return False

    async def parse(self, call: InboundCall) -> InboundMessage:
        env = t.envelope(call.headers)
        device = await self._devices.get(env.device_id)
        if device is None:
            raise UnknownSender("unknown device", code="unknown_device")
        if not t.verify(device.key, call.operation, env, call.body):
            raise InvalidNotification("bad signature", code="signature")
        if not device.enabled:
            raise UnknownSender("device disabled", code="device_disabled")
        if not t.within_window(env):
            raise InvalidNotification("timestamp outside the window", code="timestamp")
        try:
            request = decode(t.parse(call.operation, call.body))
        except t.BadMessage as exc:
            raise BadMessage(str(exc), code="malformed") from exc
        # The nonce is checked once per device: the seam's store scopes it by channel, and
        # a device's nonces are its own.
        scoped = hashlib.sha256(f"{env.device_id}:{env.nonce}".encode()).hexdigest()
        return InboundMessage(NAME, request, nonce=scoped, sender=env.device_id)

    async def render(
        self, call: InboundCall, message: InboundMessage | None, answer: InboundAnswer
    ) -> WireReply:
        body = json.dumps(
            _doc(answer, message.request if message else None),
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        device_id = call.headers.get(t.H_DEVICE, "")
        device = await self._devices.get(device_id) if t.DEVICE_ID.match(device_id) else None
        if device is None:  # no key to sign with: the kiosk distrusts the answer
            return WireReply(body)
        ts, nonce = str(int(time.time())), secrets.token_hex(12)
        signed = t.response_message(call.operation, device_id, ts, nonce, body)
        if device.key.alg == "HMAC" and device.key.secret is not None:
            sig = t.hmac_sign(device.key.secret, signed)
        else:
            sig = base64.b64encode(self._signer.sign(signed)).decode()
        headers = {"X-Kiosk-Timestamp": ts, "X-Kiosk-Nonce": nonce, "X-Kiosk-Signature": sig}
        return WireReply(body, headers=headers)


# ------------------------------------------------------------------ answers to the wire


def _confirm_doc(answer: InboundAnswer, request: InboundRequest | None) -> dict[str, Any]:
    code, msg = _code(answer.outcome)
    doc: dict[str, Any] = {
        "seq": request.sequence if isinstance(request, ConfirmPayment) else None,
        "code": code,
        "msg": msg,
    }
    receipt = answer.receipt
    if answer.outcome == Outcome.OK and receipt is not None:
        doc |= {
            "disposition": receipt.disposition.value,
            "order_id": receipt.order_id,
            "receipt_id": receipt.receipt_id,
        }
        if isinstance(answer, KioskAnswer) and answer.slip is not None:
            doc["receipt"] = answer.slip.doc()
    return doc


def _doc(answer: InboundAnswer, request: InboundRequest | None) -> dict[str, Any]:
    code, msg = _code(answer.outcome)
    data: dict[str, Any] | None = None
    if isinstance(request, ConfirmPayment):
        data = _confirm_doc(answer, request)
    elif answer.outcome != Outcome.OK:
        data = None
    elif answer.bill is not None:
        data = answer.bill.doc(t.format_time)
    elif isinstance(request, KioskUpload):
        data = {
            "results": [
                _confirm_doc(a, item) for a, item in zip(answer.items, request.items, strict=True)
            ],
            "missing": [list(r) for r in _missing(answer)],
        }
    elif isinstance(request, Reprint) and isinstance(answer, KioskAnswer) and answer.slip:
        data = {"receipt": answer.slip.doc()}
    elif isinstance(request, Heartbeat) and isinstance(answer, KioskAnswer):
        when = answer.server_time
        data = {
            "server_time": t.format_time(when) if when else None,
            "missing": [list(r) for r in answer.missing],
        }
    return {"code": code, "msg": msg, "data": data}


def _missing(answer: InboundAnswer) -> tuple[tuple[int, int], ...]:
    return answer.missing if isinstance(answer, KioskAnswer) else ()
