"""Banks registered in the database: CLI and admin API, secrets encrypted at rest and never
listed, key rotation with a grace period, disabled banks refused by the directory."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from channels.bank import registry
from channels.bank.models import Bank
from channels.bank.signing import HmacSigning, Sm2Signing
from gateway.cli import main
from gateway.state import Resources
from kernel.audit import Actor
from kernel.errors import InvalidInput
from kernel.models import AuditEntry
from kernel.sm2 import PrivateKey
from kernel.staff import create_staff

ACTOR = Actor("finance", "test")
SECRET = "s" * 40


async def _invoke(*args: str) -> Result:
    # The CLI runs its own event loop; give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def _doc(result: Result) -> Any:
    """The command's JSON document (log lines may come before it)."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line in {"{", "["})
    return json.loads("\n".join(lines[start:]))


async def test_hmac_bank_secret_is_encrypted_and_rotation_keeps_the_old_one_a_while(
    res: Resources,
) -> None:
    async with res.sessions() as s, s.begin():
        made = await registry.add(
            s,
            code="105",
            name="建设银行",
            sign_method="HMAC-SHA256",
            endpoint="http://127.0.0.1:9/banks/105/",
            actor=ACTOR,
            secret=SECRET,
        )
    assert made.secret == SECRET
    async with res.sessions() as s:
        row = await s.get_one(Bank, "105")
        assert row.secret_enc is not None
        assert SECRET.encode() not in row.secret_enc
        assert row.endpoint == "http://127.0.0.1:9/banks/105"
        listed = await registry.list_banks(s)
    assert SECRET not in json.dumps(listed)
    assert listed[0]["sign_method"] == "HMAC-SHA256"

    canonical = b"POST\n/x\n1\nn\nd"
    old_mac = HmacSigning(SECRET.encode()).sign(canonical)
    now = datetime.now(UTC)
    async with res.sessions() as s, s.begin():
        rotated = await registry.rotate(s, "105", actor=ACTOR, grace=timedelta(hours=1), now=now)
    assert rotated.secret is not None
    assert rotated.secret != SECRET
    async with res.sessions() as s:
        row = await s.get_one(Bank, "105")
        during = registry.entry_of(row, now + timedelta(minutes=59))
        after = registry.entry_of(row, now + timedelta(minutes=61))
        actions = list(await s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert during.signing.verify(canonical, old_mac)
    assert not after.signing.verify(canonical, old_mac)
    assert after.signing.sign(canonical) == HmacSigning(rotated.secret.encode()).sign(canonical)
    assert actions == ["bank.added", "bank.rotated"]


async def test_sm2_bank_gets_our_key_pair_and_is_refused_once_disabled(res: Resources) -> None:
    bank_key = PrivateKey.generate()
    async with res.sessions() as s, s.begin():
        made = await registry.add(
            s,
            code="106",
            name="SM2 Bank",
            sign_method="SM2-SM3",
            endpoint="https://bank.example/api",
            actor=ACTOR,
            bank_public_key=bank_key.public.hex,
        )
    assert made.our_public_key is not None
    directory = res.banks
    await directory.refresh()
    entry = await directory.get("106")
    assert entry is not None
    assert isinstance(entry.signing, Sm2Signing)
    assert entry.signing.own.public.hex == made.our_public_key
    bank_side = Sm2Signing(own=bank_key, peer=entry.signing.own.public)
    assert entry.signing.verify(b"m", bank_side.sign(b"m"))
    assert bank_side.verify(b"a", entry.signing.sign(b"a"))

    async with res.sessions() as s, s.begin():
        await registry.set_enabled(s, "106", enabled=False, actor=ACTOR)
    await directory.refresh()
    assert await directory.get("106") is None
    assert await directory.get("999") is None


async def test_bad_registrations_are_refused_and_write_nothing(res: Resources) -> None:
    cases = [
        ({"code": "12a"}, "bad_bank_code"),
        ({"sign_method": "MD5"}, "bad_sign_method"),
        ({"endpoint": "ftp://x"}, "bad_endpoint"),
        ({"secret": "short"}, "weak_secret"),
        ({"sign_method": "SM2-SM3", "bank_public_key": "04ab"}, "bad_public_key"),
    ]
    for change, code in cases:
        fields = {
            "code": "107",
            "name": "X",
            "sign_method": "HMAC-SHA256",
            "endpoint": "http://h/b",
            "secret": SECRET,
        } | change
        async with res.sessions() as s:
            with pytest.raises(InvalidInput) as refused:
                await registry.add(s, actor=ACTOR, **fields)  # type: ignore[arg-type]
            assert refused.value.code == code
    async with res.sessions() as s:
        assert await registry.list_banks(s) == []


async def test_admin_api_for_finance_only(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    async with res.sessions() as s:
        _, finance = await create_staff(s, name="wang", role="finance")
        _, auditor = await create_staff(s, name="zhao", role="auditor")
        await s.commit()
    fin = {"Authorization": f"Bearer {finance}"}
    aud = {"Authorization": f"Bearer {auditor}"}
    body = {
        "code": "108",
        "name": "Bank 108",
        "sign_method": "HMAC-SHA256",
        "endpoint": "http://127.0.0.1:9/banks/108",
    }
    assert (await client.post("/v1/banks", json=body, headers=aud)).status_code == 403
    assert (await client.post("/v1/banks", json=body)).status_code == 401
    r = await client.post("/v1/banks", json=body, headers=fin)
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    assert len(secret) >= 32
    again = await client.post("/v1/banks", json=body, headers=fin)
    assert (again.status_code, again.json()["code"]) == (409, "bank_exists")
    listed = (await client.get("/v1/banks", headers=aud)).json()
    assert [(b["code"], b["enabled"]) for b in listed] == [("108", True)]
    assert secret not in json.dumps(listed)
    r = await client.post("/v1/banks/108/disable", headers=fin)
    assert (r.status_code, r.json()["enabled"]) == (200, False)
    r = await client.post("/v1/banks/108/rotate", json={"grace_s": 60}, headers=fin)
    assert r.status_code == 200
    assert r.json()["secret"] not in (None, secret)
    missing = await client.post("/v1/banks/999/enable", headers=fin)
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_bank")


async def test_cli_add_list_disable_rotate(res: Resources) -> None:
    bank_key = PrivateKey.generate()
    added = await _invoke(
        "bank", "add", "109", "--name", "CLI Bank", "--method", "SM2-SM3",
        "--endpoint", "http://127.0.0.1:9/banks/109", "--public-key", bank_key.public.hex,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    ours = _doc(added)["our_public_key"]
    listed = await _invoke("bank", "list")
    assert _doc(listed)[0]["our_public_key"] == ours
    disabled = await _invoke("bank", "disable", "109")
    assert _doc(disabled)["enabled"] is False
    rotated = await _invoke("bank", "rotate", "109", "--grace-hours", "0")
    assert rotated.exit_code == 0, rotated.output
    assert _doc(rotated)["our_public_key"] not in (None, ours)
    unknown = await _invoke("bank", "disable", "404")
    assert unknown.exit_code != 0
    assert "unknown_bank" in unknown.output
