"""How one side of the bank interface signs what it sends and verifies what it receives.

Each bank's registration chooses the method; both sign the same canonical string
(transforms.canonical) and put the result in `X-Bank-Signature`:

- HMAC-SHA256 with a secret both sides hold: lowercase hex of the MAC.
- SM2 with SM3 (kernel.sm2): each side signs with its own private key and verifies the
  other's messages with the other's public key; lowercase hex of the DER signature.

After a key rotation the previous key of the other side still verifies until the bank has
switched (`previous`); what we send is always signed with the current key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from kernel.sm2 import PrivateKey, PublicKey

__all__ = [
    "HmacSigning",
    "Signing",
    "Sm2Signing",
    "as_signing",
]

HMAC_SHA256 = "HMAC-SHA256"
SM2_SM3 = "SM2-SM3"


class Signing(Protocol):
    @property
    def method(self) -> str:
        """HMAC-SHA256 or SM2-SM3."""
        ...

    def sign(self, canonical: bytes) -> str:
        """The signature header's value for a message we send."""
        ...

    def verify(self, canonical: bytes, signature: str) -> bool:
        """Whether the other side signed this message."""
        ...


@dataclass(frozen=True, slots=True)
class HmacSigning:
    secret: bytes
    previous: bytes | None = None
    method: str = HMAC_SHA256

    def sign(self, canonical: bytes) -> str:
        return hmac.new(self.secret, canonical, hashlib.sha256).hexdigest()

    def verify(self, canonical: bytes, signature: str) -> bool:
        for secret in (self.secret, self.previous):
            if secret is not None:
                want = hmac.new(secret, canonical, hashlib.sha256).hexdigest()
                if hmac.compare_digest(want, signature):
                    return True
        return False


@dataclass(frozen=True, slots=True)
class Sm2Signing:
    own: PrivateKey
    """Signs what this side sends."""
    peer: PublicKey
    """Verifies what the other side sends."""
    previous_peer: PublicKey | None = None
    method: str = SM2_SM3

    def sign(self, canonical: bytes) -> str:
        return self.own.sign(canonical).hex()

    def verify(self, canonical: bytes, signature: str) -> bool:
        try:
            der = bytes.fromhex(signature)
        except ValueError:
            return False
        return any(
            key is not None and key.verify(canonical, der)
            for key in (self.peer, self.previous_peer)
        )


def as_signing(key: bytes | Signing) -> Signing:
    """A bare secret is HMAC-SHA256 (how banks were configured before SM2)."""
    return HmacSigning(key) if isinstance(key, bytes) else key
