"""Fixed vectors for the bank interface's two signing methods, so that a mistake mirrored
in the adapter and the simulator cannot hide.

HMAC-SHA256: the expected MAC was computed with OpenSSL's command line
(`openssl dgst -sha256 -hmac`), not with this code. SM2-SM3: the key pair is the example
of GB/T 32918 (its public key is the standard's), a fixed signature made by GmSSL
(gmssl-pyx, an independent C implementation) must verify with ours, and ours with GmSSL;
SM2 signatures are randomised, so a fresh one is checked by verification, not by value.
"""

from __future__ import annotations

import gmssl_pyx
import pytest

from channels.bank import transforms as t
from channels.bank.signing import HmacSigning, Sm2Signing
from channels.base import InvalidNotification
from kernel.sm2 import PrivateKey, PublicKey

BODY = b'{"payment_code":"33010026010000000019"}'
CANONICAL = (
    b"POST\n/v1/channels/bank/105/confirm\n1764979200\n0123456789abcdef01234567\n"
    b"5783844d9acda3c8381ec2cd0c87cf2e57502333e8b9d13f3f0ff04aadc6a4ea"
)
HMAC_SECRET = b"paygate-vector-secret-0123456789abcdef"
HMAC_MAC = "21e91b8cb65f8328215a9fce3f7cd0a5cdb505c673f4029711b4833e774182bb"

SM2_PRIVATE = "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8"
SM2_PUBLIC = (
    "04"
    "09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020"
    "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13"
)
GMSSL_SIGNATURE = (
    "3045022100d48d80a3646d4d5aef35ea5e6f9f02a269431bf00a37d9ab05bae2ba4c8029390220"
    "7af0492a8ecff095aa80feddb4b4c82cb2c3d09027e54c0699fbbbb6fb97be5f"
)


def test_canonical_string_vector() -> None:
    got = t.canonical(
        "post", "/v1/channels/bank/105/confirm", "1764979200", "0123456789abcdef01234567", BODY
    )
    assert got == CANONICAL


def test_hmac_vector() -> None:
    signing = HmacSigning(HMAC_SECRET)
    assert signing.sign(CANONICAL) == HMAC_MAC
    assert signing.verify(CANONICAL, HMAC_MAC)
    assert not signing.verify(CANONICAL + b"x", HMAC_MAC)
    assert not HmacSigning(b"another-secret-0123456789abcdef0123").verify(CANONICAL, HMAC_MAC)
    # After a rotation the previous secret still verifies, and we sign with the new one.
    rotated = HmacSigning(b"new-secret-0123456789abcdef0123456789", previous=HMAC_SECRET)
    assert rotated.verify(CANONICAL, HMAC_MAC)
    assert rotated.sign(CANONICAL) != HMAC_MAC


def test_sm2_vector_against_gmssl() -> None:
    key = PrivateKey(SM2_PRIVATE)
    assert key.public.hex == SM2_PUBLIC  # the standard's example public key
    public = PublicKey(SM2_PUBLIC)
    point = bytes.fromhex(SM2_PUBLIC)[1:]
    # GmSSL's fixed signature verifies with ours...
    assert public.verify(CANONICAL, bytes.fromhex(GMSSL_SIGNATURE))
    assert gmssl_pyx.sm2_verify(point, CANONICAL, bytes.fromhex(GMSSL_SIGNATURE))
    # ...and ours with GmSSL; randomised, yet each verifies.
    ours = key.sign(CANONICAL)
    assert ours != key.sign(CANONICAL)
    assert gmssl_pyx.sm2_verify(point, CANONICAL, ours)
    # Any change is caught by both.
    assert not public.verify(CANONICAL + b"x", ours)
    assert not gmssl_pyx.sm2_verify(point, CANONICAL + b"x", ours)
    mangled = bytearray(ours)
    mangled[10] ^= 1
    assert not public.verify(CANONICAL, bytes(mangled))


def test_sm2_signing_on_the_wire_both_directions() -> None:
    """The bank signs with its key, we verify with its public key; and back."""
    bank_key, our_key = PrivateKey(SM2_PRIVATE), PrivateKey.generate()
    bank_side = Sm2Signing(own=bank_key, peer=our_key.public)
    our_side = Sm2Signing(own=our_key, peer=bank_key.public)
    path = "/v1/channels/bank/105/confirm"
    headers = {k.lower(): v for k, v in t.sign(bank_side, "POST", path, BODY, "105").items()}
    assert t.verify(our_side, "105", "POST", path, headers, BODY).nonce == headers["x-bank-nonce"]
    forged = {k.lower(): v for k, v in t.sign(our_side, "POST", path, BODY, "105").items()}
    with pytest.raises(InvalidNotification):  # signed by us is not signed by the bank
        t.verify(our_side, "105", "POST", path, forged, BODY)
    with pytest.raises(InvalidNotification):
        t.verify(our_side, "105", "POST", path, headers, BODY + b" ")
    with pytest.raises(InvalidNotification):
        t.verify(our_side, "105", "POST", path, headers | {"x-bank-signature": "zz"}, BODY)
    answer = {k.lower(): v for k, v in t.sign(our_side, "RESPONSE", path, b"{}", "105").items()}
    t.verify(bank_side, "105", "RESPONSE", path, answer, b"{}")
