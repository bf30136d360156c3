"""RSA key pairs in the formats the SDK needs, generated at run time (never in the repo).

App private key: PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`); public keys: SPKI PEM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "KeySet",
    "ensure_keys",
]


def generate_keypair(bits: int = 2048) -> tuple[str, str]:
    """(private PKCS#1 PEM, public SPKI PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 for RSA
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return private, public


@dataclass(frozen=True, slots=True)
class KeySet:
    """Both sides' pairs: the app (merchant, us) and Alipay (the simulator)."""

    app_private: Path
    app_public: Path
    alipay_private: Path
    alipay_public: Path


def ensure_keys(directory: Path) -> KeySet:
    """Create the two key pairs under `directory` once (mode 0600), then reuse them."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = KeySet(
        app_private=directory / "app_private_key.pem",
        app_public=directory / "app_public_key.pem",
        alipay_private=directory / "alipay_private_key.pem",
        alipay_public=directory / "alipay_public_key.pem",
    )
    for private_path, public_path in (
        (keys.app_private, keys.app_public),
        (keys.alipay_private, keys.alipay_public),
    ):
        if private_path.exists() and public_path.exists():
            continue
        private, public = generate_keypair()
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(private)
        public_path.write_text(public, encoding="ascii")
    return keys
