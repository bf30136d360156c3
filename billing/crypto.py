"""Field encryption (AES-256-GCM) and keyed hashes for personal data and stored secrets.

Blob layout: version byte 0x01 | key id byte | 12-byte nonce | ciphertext+tag. The key id
lets keys rotate: new writes use the newest key, old blobs still decrypt. `aad` binds a
ciphertext to its row and column (e.g. b"bills.payer_id:<bill id>") so a blob copied to
another row does not decrypt.

Keys come from `PAYGATE_DATA_KEYS` ("1:<base64 32 bytes>,2:<...>", newest = highest id)
and `PAYGATE_HASH_KEY` (base64, ≥ 32 bytes). Outside production, missing keys are generated
once under `var/keys/` (mode 0600) so a laptop works out of the box; in production a
missing key stops the process at start-up instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_FORMAT = 1


@dataclass(frozen=True)
class Keyring:
    data_keys: dict[int, bytes]
    hash_key: bytes

    @property
    def current(self) -> int:
        return max(self.data_keys)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        kid = self.current
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self.data_keys[kid]).encrypt(nonce, plaintext, aad)
        return bytes((_FORMAT, kid)) + nonce + sealed

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        if len(blob) < 2 + 12 + 16 or blob[0] != _FORMAT:
            raise ValueError("not an encrypted field")
        key = self.data_keys.get(blob[1])
        if key is None:
            raise ValueError(f"data key {blob[1]} is not configured")
        return AESGCM(key).decrypt(blob[2:14], blob[14:], aad)

    def keyed_hash(self, value: str, *, purpose: bytes) -> bytes:
        """Deterministic HMAC for exact-match search without storing the plaintext."""
        return hmac.new(self.hash_key, purpose + b"\x00" + value.encode(), hashlib.sha256).digest()


def _parse_keys(raw: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        kid, _, b64 = part.partition(":")
        key = base64.b64decode(b64)
        if len(key) != 32 or not 0 < int(kid) < 256:
            raise ValueError("PAYGATE_DATA_KEYS entries are '<1..255>:<base64 of 32 bytes>'")
        keys[int(kid)] = key
    return keys


def _dev_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def load_keyring(env: dict[str, str] | None = None) -> Keyring:
    env = dict(os.environ) if env is None else env
    production = env.get("PAYGATE_ENV", "development") == "production"
    key_dir = Path(env.get("PAYGATE_KEY_DIR", "var/keys"))
    raw = env.get("PAYGATE_DATA_KEYS", "").strip()
    hash_raw = env.get("PAYGATE_HASH_KEY", "").strip()
    if production and not (raw and hash_raw):
        raise RuntimeError("PAYGATE_DATA_KEYS and PAYGATE_HASH_KEY must be set in production")
    data_keys = _parse_keys(raw) if raw else {1: _dev_key(key_dir / "data-1.key")}
    hash_key = base64.b64decode(hash_raw) if hash_raw else _dev_key(key_dir / "hash.key")
    if len(hash_key) < 32:
        raise ValueError("PAYGATE_HASH_KEY must be at least 32 bytes")
    return Keyring(data_keys, hash_key)


@lru_cache(maxsize=1)
def keyring() -> Keyring:
    """The process keyring, loaded once from the environment."""
    return load_keyring()


def mask_id_number(value: str) -> str:
    """330102199001011234 → 3301**********1234: enough for a person to recognise it."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]
