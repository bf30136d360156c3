"""Fixed vectors for the bank's HMAC, computed once outside this code base with

    printf '%s' "$BODY" | sha256sum
    printf 'POST\n<path>\n<ts>\n<nonce>\n<body sha256>' | openssl dgst -sha256 -hmac "$SECRET"

and written here literally, so a mistake mirrored in the adapter and the simulator (both use
channels.bank.transforms) cannot hide. docs/channels/bank.md shows the same examples."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from channels.bank import transforms as t
from channels.base import InvalidNotification

SECRET = b"bank-102-test-vector-secret"
CONFIRM_BODY = (
    b'{"payment_code":"33010026010000000017","bank_serial":"10220261206A1B2C3D4E5F6",'
    b'"amount":"123.45","paid_at":"2026-12-06 10:30:00","pay_mode":"app"}'
)
CONFIRM_BODY_SHA256 = "c4c36e8383e7825567f7a0c2b5c7248008a5ede39a03eade5e834cdf27f9504e"
ANSWER_BODY = b'{"code":"11001","msg":"unknown payment code","data":null}'

VECTORS = [
    # (method, path, timestamp, nonce, body, canonical string, expected MAC)
    (
        "POST",
        "/v1/channels/bank/102/confirm",
        "1796529600",
        "0f1e2d3c4b5a69788796a5b4",
        CONFIRM_BODY,
        (
            "POST\n/v1/channels/bank/102/confirm\n1796529600\n0f1e2d3c4b5a69788796a5b4\n"
            "c4c36e8383e7825567f7a0c2b5c7248008a5ede39a03eade5e834cdf27f9504e"
        ),
        "491a196ea4c5f42978843c9b40fbad90d4554c2e704558e8e78232449b3b7bf8",
    ),
    (
        "RESPONSE",
        "/v1/channels/bank/102/query",
        "1796529601",
        "00112233445566778899aabb",
        b"",
        (
            "RESPONSE\n/v1/channels/bank/102/query\n1796529601\n00112233445566778899aabb\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ),
        "7ed93d7fcdfcd458abbaddefa515cca44b982e6764ed6c8f1e3fb62c93efc20c",
    ),
    (
        "RESPONSE",
        "/v1/channels/bank/102/query",
        "1796529601",
        "00112233445566778899aabb",
        ANSWER_BODY,
        (
            "RESPONSE\n/v1/channels/bank/102/query\n1796529601\n00112233445566778899aabb\n"
            "a7fa87f28345ac0886cb6dd32b9b9035713b0e3b863481482ee49ace69a387de"
        ),
        "e7c01934a38a0230fb21eed96dc1383b99cfe34281a830827948fd4693fd5d8e",
    ),
]


def test_the_body_digest_is_sha256_hex() -> None:
    assert hashlib.sha256(CONFIRM_BODY).hexdigest() == CONFIRM_BODY_SHA256


@pytest.mark.parametrize(("method", "path", "ts", "nonce", "body", "canon", "mac"), VECTORS)
def test_canonical_string_and_mac_match_the_vectors(  # noqa: PLR0917 - one vector
    method: str, path: str, ts: str, nonce: str, body: bytes, canon: str, mac: str
) -> None:
    assert t.canonical(method, path, ts, nonce, body) == canon.encode()
    headers = {
        t.H_CODE: "102",
        t.H_TS: ts,
        t.H_NONCE: nonce,
        t.H_SIG: mac,
    }
    verified = t.verify(SECRET, "102", method, path, headers, body, now=float(ts))
    assert verified.nonce == nonce


@pytest.mark.parametrize(("method", "path", "ts", "nonce", "body", "canon", "mac"), VECTORS)
def test_a_vector_fails_with_one_part_changed(  # noqa: PLR0917 - one vector
    method: str, path: str, ts: str, nonce: str, body: bytes, canon: str, mac: str
) -> None:
    del canon
    headers = {t.H_CODE: "102", t.H_TS: ts, t.H_NONCE: nonce, t.H_SIG: mac}
    tampered = [
        (method, path, headers, body + b" "),
        (method, path + "x", headers, body),
        ("GET", path, headers, body),
        (method, path, headers | {t.H_NONCE: nonce[::-1]}, body),
        (method, path, headers | {t.H_SIG: mac.upper()}, body),
    ]
    for m, p, h, b in tampered:
        with pytest.raises(InvalidNotification):
            t.verify(SECRET, "102", m, p, h, b, now=float(ts))
    with pytest.raises(InvalidNotification):
        t.verify(b"another-secret", "102", method, path, headers, body, now=float(ts))


def test_the_protocol_document_shows_these_vectors() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs/channels/bank.md").read_text()
    assert SECRET.decode() in doc
    assert CONFIRM_BODY.decode() in doc
    assert ANSWER_BODY.decode() in doc
    for *_, canon, mac in VECTORS:
        assert mac in doc
        if canon.split("\n")[-1] != hashlib.sha256(b"").hexdigest():
            assert canon.replace("\n", "\\n") in doc
