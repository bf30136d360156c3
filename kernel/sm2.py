"""SM2 signatures over SM3 (GM/T 0003, GM/T 0004) with keys as plain hex, through Tongsuo
(`tongsuopy`, a C library).

Private keys are the 64-hex-digit scalar; public keys the 130-hex-digit uncompressed point
`04‖x‖y`. Signatures are DER (r, s) with the default signer id "1234567812345678" in the Z
value, which other GM implementations (GmSSL, BouncyCastle) verify by default. SM2
signatures are randomised: the same message signs differently each time, and each verifies.
"""

from __future__ import annotations

import re
from typing import Any

from tongsuopy.crypto import hashes, serialization
from tongsuopy.crypto.asymciphers import ec
from tongsuopy.crypto.exceptions import InternalError, InvalidSignature

__all__ = [
    "PrivateKey",
    "PublicKey",
]

_PRIVATE = re.compile(r"[0-9a-fA-F]{64}")
_PUBLIC = re.compile(r"04[0-9a-fA-F]{128}")


class PrivateKey:
    """An SM2 private key (its hex scalar is `hex`; keep it secret)."""

    def __init__(self, hex_scalar: str) -> None:
        if not _PRIVATE.fullmatch(hex_scalar):
            raise ValueError("an SM2 private key is 64 hex digits")
        self.hex = hex_scalar.lower()
        self._key = ec.derive_private_key(int(hex_scalar, 16), ec.SM2())
        self.public = PublicKey(_point(self._key.public_key()).hex())

    @classmethod
    def generate(cls) -> PrivateKey:
        key = ec.generate_private_key(ec.SM2())
        return cls(f"{key.private_numbers().private_value:064x}")

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message, ec.ECDSA(hashes.SM3())))


class PublicKey:
    """An SM2 public key, `hex` = 04‖x‖y."""

    def __init__(self, hex_point: str) -> None:
        if not _PUBLIC.fullmatch(hex_point):
            raise ValueError("an SM2 public key is 130 hex digits starting 04")
        self.hex = hex_point.lower()
        self._key: Any = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SM2(), bytes.fromhex(hex_point)
        )

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message, ec.ECDSA(hashes.SM3()))
        except (InvalidSignature, ValueError, InternalError):
            # InternalError: Tongsuo could not even parse the DER (a mangled signature).
            return False
        return True


def _point(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
