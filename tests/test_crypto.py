"""Field encryption round-trips, binds to its row, rotates keys; keyed hash is stable."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.exceptions import InvalidTag

from billing.crypto import load_keyring, mask_id_number


def _b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_round_trip_and_aad_binding() -> None:
    ring = load_keyring({"PAYGATE_DATA_KEYS": f"1:{_b64()}", "PAYGATE_HASH_KEY": _b64()})
    blob = ring.encrypt(b"330102199001011234", aad=b"bills.payer_id:1")
    assert b"330102199001011234" not in blob
    assert ring.decrypt(blob, aad=b"bills.payer_id:1") == b"330102199001011234"
    with pytest.raises(InvalidTag):
        ring.decrypt(blob, aad=b"bills.payer_id:2")


def test_rotation_keeps_old_blobs_readable() -> None:
    k1, k2, h = _b64(), _b64(), _b64()
    old = load_keyring({"PAYGATE_DATA_KEYS": f"1:{k1}", "PAYGATE_HASH_KEY": h})
    blob = old.encrypt(b"secret", aad=b"x")
    new = load_keyring({"PAYGATE_DATA_KEYS": f"1:{k1},2:{k2}", "PAYGATE_HASH_KEY": h})
    assert new.decrypt(blob, aad=b"x") == b"secret"
    assert new.encrypt(b"secret", aad=b"x")[1] == 2
    assert old.keyed_hash("a", purpose=b"p") == new.keyed_hash("a", purpose=b"p")
    assert new.keyed_hash("a", purpose=b"p") != new.keyed_hash("a", purpose=b"q")


def test_production_requires_keys(tmp_path: object) -> None:
    with pytest.raises(RuntimeError):
        load_keyring({"PAYGATE_ENV": "production"})


def test_dev_keys_are_generated_once(tmp_path: pytest.TempPathFactory) -> None:
    env = {"PAYGATE_KEY_DIR": str(tmp_path)}
    a, b = load_keyring(env), load_keyring(env)
    assert a.data_keys == b.data_keys
    assert a.hash_key == b.hash_key


def test_mask() -> None:
    assert mask_id_number("330102199001011234") == "3301**********1234"
