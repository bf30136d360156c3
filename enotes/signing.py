"""SM2 signatures over SM3 (GM/T 0003 / GM/T 0004) behind a small interface.

`Signer` is all the e-note code sees, so a hardware security module can replace the
software signer without touching the issuing logic. The software signer uses Tongsuo (a C
library) through `tongsuopy`; signatures are DER (r, s) with the default signer id
"1234567812345678" in the Z value, which is what other GM implementations (GmSSL, BouncyCastle)
verify by default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from tongsuopy.crypto import hashes, serialization
from tongsuopy.crypto.asymciphers import ec
from tongsuopy.crypto.exceptions import InternalError, InvalidSignature

__all__ = [
    "ALGORITHM",
    "DEFAULT_SIGNER_ID",
    "MissingKeyError",
    "NoteSigners",
    "SM2Signer",
    "SM2Verifier",
    "Signer",
    "Verifier",
    "load_signer",
    "load_verifier",
    "signed_by_supervisor",
]

log = structlog.get_logger(__name__)

ALGORITHM = "SM2-SM3"
DEFAULT_SIGNER_ID = "1234567812345678"


@runtime_checkable
class Verifier(Protocol):
    key_id: str
    cert_serial: str

    def verify(self, message: bytes, signature: bytes) -> bool: ...


@runtime_checkable
class Signer(Verifier, Protocol):
    algorithm: str

    def sign(self, message: bytes) -> bytes: ...


def sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return bytes(digest.finalize())


def public_point(public_key: Any) -> bytes:
    """The 65-byte uncompressed point (04 || x || y)."""
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def key_id_of(point: bytes) -> str:
    """A stable id for a public key: the first 16 hex digits of its SM3 digest."""
    return sm3(point).hex()[:16].upper()


class SM2Verifier:
    """Verifies with a public key only (what a verifier of old notes keeps after rotation)."""

    algorithm = ALGORITHM

    def __init__(self, public_key: Any, cert_serial: str = "") -> None:
        self._public = public_key
        self.point = public_point(public_key)
        self.key_id = key_id_of(self.point)
        self.cert_serial = cert_serial or f"DEMO-{self.key_id}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, message, ec.ECDSA(hashes.SM3()))
        except (InvalidSignature, ValueError, InternalError):
            # InternalError: Tongsuo could not even parse the DER (a mangled signature).
            return False
        return True


class SM2Signer(SM2Verifier):
    """A software SM2 key (PKCS#8 PEM, or a 64-hex-digit private scalar)."""

    def __init__(self, private_key: Any, cert_serial: str = "") -> None:
        super().__init__(private_key.public_key(), cert_serial)
        self._private = private_key

    @classmethod
    def generate(cls, cert_serial: str = "") -> SM2Signer:
        return cls(ec.generate_private_key(ec.SM2()), cert_serial)

    @classmethod
    def from_text(cls, text: str, cert_serial: str = "") -> SM2Signer:
        text = text.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            return cls(ec.derive_private_key(int(text, 16), ec.SM2()), cert_serial)
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "SM2":
            raise ValueError("the key is not an SM2 private key")
        return cls(key, cert_serial)

    def pem(self) -> bytes:
        return bytes(
            self._private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def sign(self, message: bytes) -> bytes:
        return bytes(self._private.sign(message, ec.ECDSA(hashes.SM3())))


def signed_by_supervisor(content: bytes, issuer_signature: bytes) -> bytes:
    """What the finance department signs: the content and the issuer's signature on it."""
    return content + issuer_signature


class MissingKeyError(RuntimeError):
    """No signing key is configured where demo keys are not allowed (production)."""


def _text_or_file(configured: str) -> str:
    path = Path(configured)
    is_path = "\n" not in configured and len(configured) < 4096 and path.is_file()
    return path.read_text() if is_path else configured


def load_verifier(configured: str) -> SM2Verifier:
    """A public key kept to verify notes signed before a rotation: the uncompressed point in
    hex (what `paygate enote-keys` prints), or PEM text or a PEM file of the public key."""
    text = _text_or_file(configured.strip()).strip()
    if re.fullmatch(r"04[0-9a-fA-F]{128}", text):
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SM2(), bytes.fromhex(text))
    else:
        key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "SM2":
        raise ValueError("the key is not an SM2 public key")
    return SM2Verifier(key)


def load_signer(
    configured: str, demo_path: Path, cert_serial: str, *, allow_demo: bool = True
) -> SM2Signer:
    """The configured key (PEM text, hex, or a file path); else a demo key made on first run
    (never where `allow_demo` is off: production refuses to sign with a key nobody holds).

    The demo key is created with O_EXCL semantics (write a temp file, then `link`), so two
    processes starting together agree on one key instead of overwriting each other's.
    """
    if configured:
        return SM2Signer.from_text(_text_or_file(configured), cert_serial)
    if not allow_demo:
        raise MissingKeyError(f"no e-note signing key configured (demo key {demo_path} refused)")
    if not demo_path.exists():
        demo_path.parent.mkdir(parents=True, exist_ok=True)
        fresh = SM2Signer.generate(cert_serial)
        tmp = demo_path.with_name(f".{demo_path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(fresh.pem())
        try:
            os.link(tmp, demo_path)
            log.warning("generated a demo e-note signing key", path=str(demo_path))
        except FileExistsError:
            pass  # another process won the race; use its key
        finally:
            tmp.unlink()
    return SM2Signer.from_text(demo_path.read_text(), cert_serial)


@dataclass(frozen=True, slots=True)
class NoteSigners:
    """The two parties who sign a fiscal e-note."""

    issuer: Signer
    """The collecting unit, at issue (开票单位签名)."""
    supervisor: Signer
    """The finance department, supervising (财政监制签名) once the payment is confirmed."""
    retired: tuple[Verifier, ...] = ()
    """Public keys of rotated-out signers: notes record the key id they were signed with,
    and stay verifiable after the signing key changes."""

    def keyring(self) -> dict[str, Verifier]:
        ring: dict[str, Verifier] = {v.key_id: v for v in self.retired}
        return ring | {self.issuer.key_id: self.issuer, self.supervisor.key_id: self.supervisor}
