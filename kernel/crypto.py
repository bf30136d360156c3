"""Field encryption at rest: AES-256-GCM with a key-version byte for rotation.

Token layout (bytes): ``version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)``.

- ``aad`` (associated data) binds a ciphertext to the row and field it belongs to, e.g.
  ``b"agencies.webhook_secret:" + agency_id.bytes``; a value copied into another row or
  column then fails to decrypt instead of silently meaning something else.
- Rotation: ``PAYGATE_DATA_KEY`` is the current key, used for every new encryption, with
  version ``PAYGATE_DATA_KEY_VERSION`` (1..255, default 1). Older keys stay readable through
  ``PAYGATE_DATA_KEYS_OLD`` = ``"<version>:<base64 key>,..."``. Re-encrypt at leisure, then drop
  the old key.
- Keyed hashes (HMAC-SHA256 with ``PAYGATE_HASH_KEY``) make personal data searchable by
  exact match without storing it in the clear (``keyed_hash``).
- Without ``PAYGATE_DATA_KEY`` a development key is generated once into
  ``PAYGATE_DATA_KEY_FILE`` (default ``var/data.key``, mode 0600) and reused (likewise the
  hash key in ``var/hash.key``); in production (``PAYGATE_ENV=production``) a missing key is
  a start-up error, never a generated key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DecryptError",
    "KeyConfigError",
    "KeySettings",
    "Keyring",
    "configure",
    "decrypt",
    "encrypt",
    "keyring",
    "mask_id_number",
]

KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16


class KeyConfigError(RuntimeError):
    """The data key configuration is missing or malformed (a start-up error)."""


class DecryptError(ValueError):
    """A token that cannot be decrypted: unknown key version, wrong AAD, or tampered."""


def _env_version(name: str) -> int:
    raw = os.environ.get(name, "").strip() or "1"
    if not raw.isdigit():
        raise KeyConfigError(f"{name} must be an integer 1..255, got {raw!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class KeySettings:
    data_key: str | None
    """Base64 of 32 random bytes; None → dev key file (refused in production)."""
    key_version: int
    old_keys: str
    """``"<version>:<base64>,..."`` — decrypt-only keys kept during a rotation."""
    key_file: Path
    production: bool
    hash_key: str | None = None
    """Base64 of ≥ 32 random bytes for keyed hashes; None → dev key file (not in production)."""
    hash_key_file: Path = Path("var/hash.key")

    @classmethod
    def from_env(cls) -> KeySettings:
        return cls(
            data_key=os.environ.get("PAYGATE_DATA_KEY", "").strip() or None,
            key_version=_env_version("PAYGATE_DATA_KEY_VERSION"),
            old_keys=os.environ.get("PAYGATE_DATA_KEYS_OLD", "").strip(),
            key_file=Path(os.environ.get("PAYGATE_DATA_KEY_FILE", "").strip() or "var/data.key"),
            production=os.environ.get("PAYGATE_ENV", "").strip() == "production",
            hash_key=os.environ.get("PAYGATE_HASH_KEY", "").strip() or None,
            hash_key_file=Path(
                os.environ.get("PAYGATE_HASH_KEY_FILE", "").strip() or "var/hash.key"
            ),
        )


def _decode_key(raw: str, what: str) -> bytes:
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError(f"{what} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise KeyConfigError(f"{what} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def _check_version(version: int, what: str) -> int:
    if not 1 <= version <= 255:
        raise KeyConfigError(f"{what}: key version must be 1..255, got {version}")
    return version


def _dev_key(path: Path) -> bytes:
    """Read the dev key file, creating it atomically if absent (safe across processes)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
        try:
            os.link(tmp, path)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return _decode_key(path.read_text().strip(), str(path))


class Keyring:
    """Key versions → AES-GCM ciphers; encrypts with the current one, decrypts with any."""

    def __init__(self, keys: dict[int, bytes], current: int, hash_key: bytes) -> None:
        if current not in keys:
            raise KeyConfigError(f"current key version {current} has no key")
        if len(hash_key) < KEY_BYTES:
            raise KeyConfigError(f"the hash key must be at least {KEY_BYTES} bytes")
        self._ciphers = {v: AESGCM(k) for v, k in keys.items()}
        self._hash_key = hash_key
        self.current = current

    @classmethod
    def from_settings(cls, settings: KeySettings) -> Keyring:
        current = _check_version(settings.key_version, "PAYGATE_DATA_KEY_VERSION")
        if settings.data_key is not None:
            keys = {current: _decode_key(settings.data_key, "PAYGATE_DATA_KEY")}
        elif settings.production:
            raise KeyConfigError("PAYGATE_DATA_KEY must be set in production")
        else:
            keys = {current: _dev_key(settings.key_file)}
        for entry in filter(None, (e.strip() for e in settings.old_keys.split(","))):
            version, sep, raw = entry.partition(":")
            if not sep or not version.isdigit():
                raise KeyConfigError("PAYGATE_DATA_KEYS_OLD entries are '<version>:<base64>'")
            v = _check_version(int(version), "PAYGATE_DATA_KEYS_OLD")
            if v == current:
                raise KeyConfigError(f"key version {v} is both current and old")
            keys[v] = _decode_key(raw, f"PAYGATE_DATA_KEYS_OLD version {v}")
        if settings.hash_key is not None:
            hash_key = _decode_key(settings.hash_key, "PAYGATE_HASH_KEY")
        elif settings.production:
            raise KeyConfigError("PAYGATE_HASH_KEY must be set in production")
        else:
            hash_key = _dev_key(settings.hash_key_file)
        return cls(keys, current, hash_key)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, plaintext, aad)
        return bytes([self.current]) + nonce + sealed

    def decrypt(self, token: bytes, *, aad: bytes) -> bytes:
        if len(token) < 1 + NONCE_BYTES + _TAG_BYTES:
            raise DecryptError("token too short")
        cipher = self._ciphers.get(token[0])
        if cipher is None:
            raise DecryptError(f"unknown key version {token[0]}")
        try:
            return cipher.decrypt(token[1 : 1 + NONCE_BYTES], token[1 + NONCE_BYTES :], aad)
        except InvalidTag as exc:
            raise DecryptError("ciphertext or associated data does not authenticate") from exc

    def keyed_hash(self, value: str | bytes, *, purpose: bytes) -> bytes:
        """Deterministic HMAC-SHA256 for exact-match search without storing the plaintext;
        `purpose` separates uses so one column's hashes cannot be joined against another's.
        One-shot `hmac.digest` (the C path): batches hash 10⁴ values."""
        data = value.encode() if isinstance(value, str) else value
        return hmac.digest(self._hash_key, purpose + b"\x00" + data, hashlib.sha256)

    def needs_rotation(self, token: bytes) -> bool:
        """True when the token was sealed with an older key version than the current one."""
        return bool(token) and token[0] != self.current


_keyring: Keyring | None = None


def configure(settings: KeySettings) -> Keyring:
    """Load the process keyring (call at start-up so a bad key fails fast)."""
    global _keyring  # noqa: PLW0603  # one keyring per process, swapped only by configure()
    _keyring = Keyring.from_settings(settings)
    return _keyring


def keyring() -> Keyring:
    """The process keyring, loaded from the environment on first use if not configured."""
    return _keyring if _keyring is not None else configure(KeySettings.from_env())


def encrypt(plaintext: bytes, *, aad: bytes) -> bytes:
    return keyring().encrypt(plaintext, aad=aad)


def decrypt(token: bytes, *, aad: bytes) -> bytes:
    return keyring().decrypt(token, aad=aad)


def mask_id_number(value: str) -> str:
    """330102199001011234 → 3301**********1234: enough for a person to recognise it."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]
