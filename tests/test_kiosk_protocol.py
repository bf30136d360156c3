"""The kiosk protocol's pure parts: the documented signature vector, SM2, message shapes."""

from __future__ import annotations

import hashlib
import json

import pytest

from channels.base import InvalidNotification
from channels.kiosk import transforms as t

BODY = (
    b'{"seq":17,"order_id":"5c2412e3-adfb-4551-9cf2-b75ba7a2755f",'
    b'"payment_code":"33010026012476184232","amount":"123.45","paid_at":"2026-12-06 10:15:30",'
    b'"acquirer_ref":"120612345678","method":"CARD","card":"622202******1234"}'
)


def test_the_documented_hmac_vector() -> None:
    """docs/channels/kiosk.md, "Test vector": fixed numbers, so a mistake mirrored in the
    server and the simulator cannot hide."""
    assert hashlib.sha256(BODY).hexdigest() == (
        "09140e387c9a5d3493a6621a575ed6e072461d87c4188668acc8c7ecd8c6eca3"
    )
    message = t.canonical("confirm", "K-HZ-0001", "1796523330", "5f2c0a9e8b7d4c3a2f1e0d9c", BODY)
    assert message.decode().split("\n")[:5] == [
        "KIOSK1",
        "confirm",
        "K-HZ-0001",
        "1796523330",
        "5f2c0a9e8b7d4c3a2f1e0d9c",
    ]
    assert t.hmac_sign(b"kiosk-demo-secret-0001", message) == (
        "e4e4672d1cac73677215851fcc290e447b782ff4d23f06dd6f24dcfb89f264e6"
    )
    env = t.Envelope(
        "K-HZ-0001",
        "1796523330",
        "5f2c0a9e8b7d4c3a2f1e0d9c",
        "e4e4672d1cac73677215851fcc290e447b782ff4d23f06dd6f24dcfb89f264e6",
    )
    key = t.DeviceKey("HMAC", secret=b"kiosk-demo-secret-0001")
    assert t.verify(key, "confirm", env, BODY)
    # Bound to the operation and the body.
    assert not t.verify(key, "query", env, BODY)
    assert not t.verify(key, "confirm", env, BODY.replace(b"123.45", b"123.46"))


def test_sm2_signatures_verify_with_the_public_key_only() -> None:
    private, public = t.sm2_keypair()
    headers = t.request_headers("heartbeat", "K-1", b"{}", private_pem=private)
    env = t.envelope({k.lower(): v for k, v in headers.items()})
    assert t.verify(t.DeviceKey("SM2", public_pem=public), "heartbeat", env, b"{}")
    _, other = t.sm2_keypair()
    assert not t.verify(t.DeviceKey("SM2", public_pem=other), "heartbeat", env, b"{}")
    assert not t.sm2_verify(public, b"x", "not base64!")
    with pytest.raises(ValueError):
        t.sm2_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_envelopes_and_messages_are_strict() -> None:
    with pytest.raises(InvalidNotification):
        t.envelope({"x-kiosk-device": "K 1", "x-kiosk-timestamp": "1", "x-kiosk-nonce": "n" * 16})
    with pytest.raises(InvalidNotification):
        t.envelope({"x-kiosk-device": "K-1", "x-kiosk-timestamp": "1", "x-kiosk-nonce": "short"})
    good = json.loads(BODY)
    assert t.parse("confirm", BODY) == t.parse_confirm(good)
    assert t.parse_confirm(good).amount == 12_345
    for bad in (
        {"amount": "12.345"},
        {"amount": "0.00"},
        {"seq": 0},
        {"seq": True},
        {"card": "6222021234561234"},  # unmasked
        {"method": "CASH"},
        {"acquirer_ref": "a b"},
        {"paid_at": "2026-12-06T10:15:30"},
    ):
        with pytest.raises(t.BadMessage):
            t.parse_confirm(good | bad)
    with pytest.raises(t.BadMessage):
        t.parse("upload", b'{"confirmations": []}')
    with pytest.raises(t.BadMessage):
        t.parse("upload", json.dumps({"confirmations": [good] * 201}).encode())
    with pytest.raises(t.BadMessage):
        t.parse("query", b"[1]")
    assert t.parse("heartbeat", b"{}") == t.Heartbeat(last_seq=0, status="OK")


def test_every_outcome_has_a_kiosk_code() -> None:
    from channels.base import Outcome
    from channels.kiosk.inbound import RESULT_CODES

    assert set(RESULT_CODES) == set(Outcome)
    assert RESULT_CODES[Outcome.FORGED][0] == t.ResultCode.BAD_SIGNATURE
    assert RESULT_CODES[Outcome.UNKNOWN_SENDER][0] == t.ResultCode.UNKNOWN_DEVICE
