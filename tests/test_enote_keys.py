"""E-note keys: notes signed before a key rotation still verify (retired public keys kept by
key id); production refuses to start without configured keys instead of making demo ones."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from enotes.models import ENote
from enotes.service import run_issue_job
from gateway.app import create_app
from gateway.enotes import enote_context
from gateway.settings import Settings
from gateway.state import Resources
from tests.enote_helpers import agency_with_items, paid_bill


def _rotated(settings: Settings, *, keep_retired: bool) -> Settings:
    """New signing keys for both roles; the old public keys kept (as `paygate enote-keys`
    prints them) or forgotten."""
    old = enote_context(settings).signers
    retired = (old.issuer.point.hex(), old.supervisor.point.hex()) if keep_retired else ()
    enote = replace(
        settings.enote,
        issuer_key=secrets.token_hex(32),
        supervisor_key=secrets.token_hex(32),
        retired_keys=retired,
    )
    return replace(settings, enote=enote)


async def test_notes_signed_before_a_rotation_still_verify(
    res: Resources, settings: Settings
) -> None:
    async with res.sessions() as s, s.begin():
        agency, fine, _ = await agency_with_items(s)
        await paid_bill(s, agency, [(fine, 1, 20_000)])
        await paid_bill(s, agency, [(fine, 1, 30_000)], enqueue=False)
    assert await run_issue_job(res.sessions, enote_context(settings)) == 1
    async with res.sessions() as s:
        old_note = (await s.scalars(select(ENote))).one()

    rotated = _rotated(settings, keep_retired=True)
    new_keys = enote_context(rotated).signers
    assert new_keys.issuer.key_id != old_note.issuer_key_id
    query = {"code": old_note.note_code, "number": old_note.note_number}
    async with AsyncTestClient(app=create_app(rotated)) as c:
        r = await c.get("/v1/enotes/verify", params={**query, "check": old_note.check_code})
        body = r.json()
        assert body["status"] == "valid", body
        assert [s["key_id"] for s in body["signatures"]] == [
            old_note.issuer_key_id,
            old_note.supervisor_key_id,
        ]
        assert all(s["valid"] for s in body["signatures"])

    # Without the retired keys the same note cannot be checked at all.
    forgetful = _rotated(settings, keep_retired=False)
    async with AsyncTestClient(app=create_app(forgetful)) as c:
        r = await c.get("/v1/enotes/verify", params={**query, "check": old_note.check_code})
        assert r.json()["status"] == "invalid"
        assert any("unknown key" in p for p in r.json()["problems"])


def test_production_refuses_to_start_without_enote_keys(tmp_path: Path, res: Resources) -> None:
    key_dir = tmp_path / "enote"
    keys = res.settings.crypto
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYGATE_ENOTE_")}
    env |= {
        "PAYGATE_ENV": "production",
        # Every other key is configured (this test session's): the e-note keys are missing.
        "PAYGATE_DATA_KEY": keys.data_key or keys.key_file.read_text().strip(),
        "PAYGATE_HASH_KEY": keys.hash_key or keys.hash_key_file.read_text().strip(),
        "PAYGATE_SERIAL_KEY": base64.b64encode(res.settings.billing.serial_key).decode(),
        "PAYGATE_ENOTE_KEY_DIR": str(key_dir),
        "PAYGATE_PORT": "1",  # never reached: it must stop before serving
    }
    for command in (["serve"], ["worker", "--once"]):
        try:
            done = subprocess.run(
                [sys.executable, "-m", "gateway.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"`paygate {command[0]}` started in production") from exc
        assert done.returncode != 0, done.stdout + done.stderr
        assert "PAYGATE_ENOTE_ISSUER_KEY" in done.stderr
        assert "Traceback" not in done.stderr
        assert not key_dir.exists() or not any(key_dir.iterdir()), "no demo key may be made"

    # With keys configured it gets past the check (here `worker --once` runs and exits).
    keyed = env | {
        "PAYGATE_ENOTE_ISSUER_KEY": secrets.token_hex(32),
        "PAYGATE_ENOTE_SUPERVISOR_KEY": secrets.token_hex(32),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "worker", "--once"],
        env=keyed,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
