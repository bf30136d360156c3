"""Field encryption: AES-256-GCM, bound to its row by AAD, with key versions for rotation."""

from __future__ import annotations

import base64
import secrets
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from kernel import crypto
from kernel.crypto import DecryptError, KeyConfigError, Keyring, KeySettings


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _settings(tmp_path: Path, **kw: object) -> KeySettings:
    base = KeySettings(
        data_key=None,
        key_version=1,
        old_keys="",
        key_file=tmp_path / "var" / "data.key",
        production=False,
        hash_key_file=tmp_path / "var" / "hash.key",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_round_trip_and_aad_binding(tmp_path: Path) -> None:
    ring = Keyring.from_settings(_settings(tmp_path, data_key=_key()))
    token = ring.encrypt(b"whsec_abc", aad=b"agency:1")
    assert token[0] == 1
    assert b"whsec_abc" not in token
    assert ring.decrypt(token, aad=b"agency:1") == b"whsec_abc"
    assert ring.encrypt(b"whsec_abc", aad=b"agency:1") != token  # fresh nonce every time
    with pytest.raises(DecryptError):
        ring.decrypt(token, aad=b"agency:2")  # copied into another row: refused
    tampered = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(DecryptError):
        ring.decrypt(tampered, aad=b"agency:1")
    with pytest.raises(DecryptError):
        ring.decrypt(b"\x01short", aad=b"agency:1")


def test_rotation_keeps_old_tokens_readable(tmp_path: Path) -> None:
    old_key, new_key = _key(), _key()
    old = Keyring.from_settings(_settings(tmp_path, data_key=old_key))
    token = old.encrypt(b"secret", aad=b"a")
    rotated = Keyring.from_settings(
        _settings(tmp_path, data_key=new_key, key_version=2, old_keys=f"1:{old_key}")
    )
    assert rotated.decrypt(token, aad=b"a") == b"secret"
    assert rotated.needs_rotation(token)
    fresh = rotated.encrypt(b"secret", aad=b"a")
    assert fresh[0] == 2
    assert not rotated.needs_rotation(fresh)
    with pytest.raises(DecryptError):
        old.decrypt(fresh, aad=b"a")  # unknown version 2 for the old ring


def test_production_without_a_key_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError):
        Keyring.from_settings(_settings(tmp_path, production=True))
    assert not (tmp_path / "var" / "data.key").exists()


@pytest.mark.parametrize(
    "kw",
    [
        {"data_key": "not base64!"},
        {"data_key": base64.b64encode(b"short").decode()},
        {"data_key": _key(), "key_version": 0},
        {"data_key": _key(), "old_keys": "oops"},
        {"data_key": _key(), "old_keys": f"1:{_key()}"},  # same version as current
    ],
)
def test_malformed_key_configuration_is_refused(tmp_path: Path, kw: dict[str, object]) -> None:
    with pytest.raises(KeyConfigError):
        Keyring.from_settings(_settings(tmp_path, **kw))


def test_dev_key_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = Keyring.from_settings(settings)
    path = tmp_path / "var" / "data.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.encrypt(b"x", aad=b"")
    assert Keyring.from_settings(settings).decrypt(token, aad=b"") == b"x"
    # no temp file left behind
    assert sorted(path.parent.iterdir()) == [path, tmp_path / "var" / "hash.key"]


def test_module_functions_use_the_configured_keyring(tmp_path: Path) -> None:
    ring = crypto.configure(_settings(tmp_path, data_key=_key()))
    try:
        token = crypto.encrypt(b"v", aad=b"ctx")
        assert ring.decrypt(token, aad=b"ctx") == b"v"
        assert crypto.decrypt(token, aad=b"ctx") == b"v"
    finally:
        crypto.configure(KeySettings.from_env())


def test_keyed_hash_is_stable_across_rotation_and_separated_by_purpose(tmp_path: Path) -> None:
    hash_key = _key()
    old = Keyring.from_settings(_settings(tmp_path, data_key=_key(), hash_key=hash_key))
    new = Keyring.from_settings(
        _settings(tmp_path, data_key=_key(), key_version=2, hash_key=hash_key)
    )
    assert old.keyed_hash("330102199001011234", purpose=b"payer_id") == new.keyed_hash(
        "330102199001011234", purpose=b"payer_id"
    )
    assert new.keyed_hash("a", purpose=b"p") != new.keyed_hash("a", purpose=b"q")


def test_production_requires_a_hash_key(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError):
        Keyring.from_settings(_settings(tmp_path, data_key=_key(), production=True))


def test_mask_id_number() -> None:
    assert crypto.mask_id_number("330102199001011234") == "3301**********1234"
    assert crypto.mask_id_number("1234") == "****"
