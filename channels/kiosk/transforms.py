"""Pure transforms of the kiosk protocol: signing, message shapes, result codes. No I/O.

The protocol is ours (there is no national kiosk standard); docs/channels/kiosk.md is its
reference. In short — every message is `POST /v1/channels/kiosk/<operation>` with a UTF-8
JSON body and four headers:

    X-Kiosk-Device     the device id
    X-Kiosk-Timestamp  unix seconds (accepted within ±300 s)
    X-Kiosk-Nonce      16–64 characters, never reused by the device
    X-Kiosk-Signature  over the canonical string below

canonical = "KIOSK1\\n<operation>\\n<device id>\\n<timestamp>\\n<nonce>\\n<hex sha256 of body>"

An HMAC device signs with HMAC-SHA256 under its secret (lowercase hex); an SM2 device signs
with its private key (SM2 over SM3, signer id 1234567812345678, base64 of the DER). Answers
carry the same headers over "KIOSK1\\nRESPONSE:<operation>\\n…": HMAC under the device's
secret, SM2 with the platform's kiosk key. Binding the operation stops a signed query being
replayed as a confirmation; the window and the nonce stop a whole message being replayed.
Amounts on the wire are yuan strings with two decimals; times are Beijing time
`yyyy-MM-dd HH:mm:ss`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tongsuopy.crypto import hashes, serialization
from tongsuopy.crypto.asymciphers import ec
from tongsuopy.crypto.exceptions import InternalError, InvalidSignature

from channels.base import InvalidNotification
from channels.money import yuan_to_fen

__all__ = [
    "DEVICE_ID",
    "MAX_SEQ_JUMP",
    "MAX_SKEW_S",
    "MAX_UPLOAD",
    "OPERATIONS",
    "BadMessage",
    "Confirm",
    "DeviceKey",
    "Envelope",
    "Heartbeat",
    "Message",
    "Query",
    "Reprint",
    "ResultCode",
    "Slip",
    "Upload",
    "canonical",
    "envelope",
    "format_time",
    "hmac_sign",
    "parse",
    "parse_confirm",
    "parse_time",
    "request_headers",
    "response_message",
    "sm2_keypair",
    "sm2_public_key",
    "sm2_sign",
    "sm2_verify",
    "verify",
    "verify_response",
    "within_window",
]

SHANGHAI = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_SKEW_S = 300
VERSION = "KIOSK1"
OPERATIONS = ("query", "confirm", "upload", "reprint", "heartbeat")
MAX_UPLOAD = 200
"""Confirmations in one upload; a kiosk with more sends several uploads."""
MAX_SEQ_JUMP = 10_000
"""How far past its highest number a device may jump: a bigger jump is a broken counter,
and would open that many gaps."""

H_DEVICE = "x-kiosk-device"
H_TS = "x-kiosk-timestamp"
H_NONCE = "x-kiosk-nonce"
H_SIG = "x-kiosk-signature"

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$")
ACQUIRER_REF = re.compile(r"^[A-Za-z0-9-]{1,64}$")
MASKED_CARD = re.compile(r"^\d{6}\*{2,9}\d{4}$")


class ResultCode:
    """The kiosk protocol's result codes (docs/channels/kiosk.md)."""

    OK = "0000"
    UNKNOWN_CODE = "1001"
    CHECK_FAILED = "1002"
    PAST_DEADLINE = "1003"
    CANCELLED = "1004"
    ALREADY_PAID = "1005"
    CONFLICT = "2001"
    AMOUNT_DIFFERS = "2004"
    UNKNOWN_ORDER = "2005"
    UNKNOWN_SEQ = "3001"
    BAD_SIGNATURE = "9001"
    BAD_REQUEST = "9002"
    UNKNOWN_DEVICE = "9003"
    TRY_LATER = "9006"


class BadMessage(ValueError):
    """A verified message whose body is not what the operation expects."""


# ------------------------------------------------------------------ time and money


def format_time(when: datetime) -> str:
    return when.astimezone(SHANGHAI).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=SHANGHAI)


# ------------------------------------------------------------------ signing


def canonical(operation: str, device_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{VERSION}\n{operation}\n{device_id}\n{timestamp}\n{nonce}\n{digest}".encode()


def hmac_sign(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sm2_public_key(pem: str) -> Any:
    """Load an SM2 public key (PEM); ValueError when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, InternalError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "SM2":
        raise ValueError("the key is not an SM2 public key")
    return key


def sm2_verify(public_pem: str, message: bytes, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        sm2_public_key(public_pem).verify(signature, message, ec.ECDSA(hashes.SM3()))
    except (binascii.Error, ValueError, InvalidSignature, InternalError):
        return False
    return True


def sm2_sign(private_pem: str, message: bytes) -> str:
    """For the simulator and tests: what an SM2 kiosk does with its private key."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SM3()))).decode()


def sm2_keypair() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh SM2 key."""
    key = ec.generate_private_key(ec.SM2())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """How one device signs: HMAC with `secret`, or SM2 with the key `public_pem` names."""

    alg: str
    secret: bytes | None = None
    public_pem: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The signature headers of a message, before the device is known."""

    device_id: str
    timestamp: str
    nonce: str
    signature: str


def envelope(headers: Mapping[str, str]) -> Envelope:
    """The headers of a request (case-insensitive or lowercased); InvalidNotification when
    they are missing or malformed."""
    env = Envelope(
        device_id=headers.get(H_DEVICE, ""),
        timestamp=headers.get(H_TS, ""),
        nonce=headers.get(H_NONCE, ""),
        signature=headers.get(H_SIG, ""),
    )
    if not DEVICE_ID.match(env.device_id):
        raise InvalidNotification("device id missing or malformed", code="device")
    if not (env.timestamp.isdigit() and 16 <= len(env.nonce) <= 64 and env.signature):
        raise InvalidNotification("signature headers missing", code="signature_missing")
    return env


def within_window(env: Envelope, now: float | None = None) -> bool:
    return abs((now if now is not None else time.time()) - int(env.timestamp)) <= MAX_SKEW_S


def verify(key: DeviceKey, operation: str, env: Envelope, body: bytes) -> bool:
    """Whether the device's signature over this message holds (the window and the nonce are
    checked by the caller)."""
    message = canonical(operation, env.device_id, env.timestamp, env.nonce, body)
    if key.alg == "HMAC" and key.secret is not None:
        return hmac.compare_digest(hmac_sign(key.secret, message), env.signature)
    if key.alg == "SM2" and key.public_pem is not None:
        return sm2_verify(key.public_pem, message, env.signature)
    return False


def request_headers(
    operation: str,
    device_id: str,
    body: bytes,
    *,
    secret: bytes | None = None,
    private_pem: str | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that sign a device's request (the simulator's and the tests' side)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(12)
    message = canonical(operation, device_id, ts, nonce, body)
    if secret is not None:
        sig = hmac_sign(secret, message)
    else:
        assert private_pem is not None
        sig = sm2_sign(private_pem, message)
    return {
        "X-Kiosk-Device": device_id,
        "X-Kiosk-Timestamp": ts,
        "X-Kiosk-Nonce": nonce,
        "X-Kiosk-Signature": sig,
        "Content-Type": "application/json",
    }


def response_message(operation: str, device_id: str, ts: str, nonce: str, body: bytes) -> bytes:
    return canonical(f"RESPONSE:{operation}", device_id, ts, nonce, body)


def verify_response(
    operation: str,
    device_id: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: bytes | None = None,
    platform_public_pem: str | None = None,
) -> bool:
    """The device's check of our answer (the simulator uses it)."""
    ts, nonce, sig = headers.get(H_TS, ""), headers.get(H_NONCE, ""), headers.get(H_SIG, "")
    if not (ts and nonce and sig):
        return False
    message = response_message(operation, device_id, ts, nonce, body)
    if secret is not None:
        return hmac.compare_digest(hmac_sign(secret, message), sig)
    return platform_public_pem is not None and sm2_verify(platform_public_pem, message, sig)


# ------------------------------------------------------------------ messages in


@dataclass(frozen=True, slots=True)
class Query:
    payment_code: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """One payment the kiosk took, as it tells us (online, or later in an upload)."""

    seq: int
    payment_code: str
    amount: int
    """Fen."""
    paid_at: datetime
    acquirer_ref: str
    method: str
    """CARD or QR."""
    order_id: uuid.UUID | None = None
    card: str | None = None
    """Masked card number (first 6, last 4) for the printed slip; never stored unmasked."""

    def digest(self) -> bytes:
        """The facts a repeat of this sequence number must match."""
        facts = [
            str(self.seq),
            self.payment_code,
            str(self.amount),
            format_time(self.paid_at),
            self.acquirer_ref,
            self.method,
            str(self.order_id or ""),
        ]
        return hashlib.sha256("\x1f".join(facts).encode()).digest()


@dataclass(frozen=True, slots=True)
class Upload:
    confirmations: tuple[Confirm, ...]


@dataclass(frozen=True, slots=True)
class Reprint:
    seq: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    last_seq: int
    status: str


Message = Query | Confirm | Upload | Reprint | Heartbeat


def _obj(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadMessage("body is not JSON") from exc
    if not isinstance(doc, dict):
        raise BadMessage("body is not a JSON object")
    return doc


def _seq(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**62:
        raise BadMessage("seq must be a positive integer")
    return value


def _str(doc: Mapping[str, Any], name: str, max_len: int = 64) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise BadMessage(f"{name} must be a non-empty string of at most {max_len} characters")
    return value


def parse_confirm(doc: Mapping[str, Any]) -> Confirm:
    try:
        amount = yuan_to_fen(_str(doc, "amount", 16))
        paid_at = parse_time(_str(doc, "paid_at", 19))
        order = doc.get("order_id")
        order_id = uuid.UUID(order) if isinstance(order, str) and order else None
    except ValueError as exc:
        raise BadMessage(str(exc)) from exc
    if amount <= 0:
        raise BadMessage("amount must be positive")
    ref = _str(doc, "acquirer_ref")
    if not ACQUIRER_REF.match(ref):
        raise BadMessage("acquirer_ref: letters, digits and '-' only")
    method = _str(doc, "method", 8)
    if method not in {"CARD", "QR"}:
        raise BadMessage("method is CARD or QR")
    card = doc.get("card")
    if card is not None and not (isinstance(card, str) and MASKED_CARD.match(card)):
        raise BadMessage("card must be masked: first 6 and last 4 digits")
    return Confirm(
        seq=_seq(doc.get("seq")),
        payment_code=_str(doc, "payment_code", 20),
        amount=amount,
        paid_at=paid_at,
        acquirer_ref=ref,
        method=method,
        order_id=order_id,
        card=card,
    )


def parse(operation: str, body: bytes) -> Message:
    """The typed message of a verified request; BadMessage when the body does not fit."""
    doc = _obj(body)
    if operation == "query":
        return Query(payment_code=_str(doc, "payment_code", 20))
    if operation == "confirm":
        return parse_confirm(doc)
    if operation == "upload":
        items = doc.get("confirmations")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_UPLOAD:
            raise BadMessage(f"confirmations: a list of 1 to {MAX_UPLOAD}")
        if not all(isinstance(i, dict) for i in items):
            raise BadMessage("confirmations: objects only")
        return Upload(tuple(parse_confirm(i) for i in items))
    if operation == "reprint":
        return Reprint(seq=_seq(doc.get("seq")))
    if operation == "heartbeat":
        last = doc.get("last_seq", 0)
        if last != 0:
            last = _seq(last)
        status = doc.get("status", "OK")
        if not isinstance(status, str) or len(status) > 32:
            raise BadMessage("status: a short string")
        return Heartbeat(last_seq=last, status=status)
    raise BadMessage(f"unknown operation {operation!r}")


# ------------------------------------------------------------------ answers out


@dataclass(frozen=True, slots=True)
class Slip:
    """What the kiosk prints: text lines and one QR (the e-note's, or a link to it)."""

    receipt_id: uuid.UUID
    lines: tuple[str, ...]
    qr_kind: str
    """ENOTE (the note's verification QR) or LINK (a page that will show it once issued)."""
    qr: str
    reprint: bool = False

    def doc(self) -> dict[str, Any]:
        return {
            "receipt_id": str(self.receipt_id),
            "lines": list(self.lines),
            "qr": {"kind": self.qr_kind, "content": self.qr},
            "copy": "REPRINT" if self.reprint else "ORIGINAL",
        }
