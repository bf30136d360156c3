"""Agencies, credit codes, API keys (rotation, revocation), the nonce fallback, catalogue,
the bill state transition, the CLI and the demo seeder."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, text, update

from billing import agencies, catalogue
from billing import bills as svc
from billing.models import Agency, ApiKey, Bill, BillEvent
from gateway import cli
from gateway.auth import authorization_header, verify
from gateway.demo import seed
from gateway.state import Resources
from kernel.audit import Actor
from kernel.crypto import DecryptError
from kernel.errors import Conflict, IllegalTransition, InvalidInput, Unauthorized
from kernel.kv import KV
from tests.agency_client import AgencyClient, bill_body, make_agency_with_key


@pytest.mark.parametrize(
    "code",
    ["91350100M000100Y43", "91110000600037341L", agencies.make_credit_code("12330000MB0000002")],
)
def test_valid_credit_codes(code: str) -> None:
    assert agencies.validate_credit_code(code.lower()) == code


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("91350100M000100Y44", "credit_code_check_failed"),
        ("91350100M000100Y4", "credit_code_malformed"),
        ("91350100M00O100Y43", "credit_code_malformed"),  # O is not in the alphabet
        ("9135A100M000100Y43", "credit_code_malformed"),  # region part is digits
    ],
)
def test_invalid_credit_codes(code: str, error: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        agencies.validate_credit_code(code)
    assert exc.value.code == error


def test_every_single_character_change_of_a_credit_code_is_caught() -> None:
    code = "91350100M000100Y43"
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    for pos in range(17):
        for ch in alphabet:
            if ch == code[pos] or (2 <= pos < 8 and not ch.isdigit()):
                continue
            changed = code[:pos] + ch + code[pos + 1 :]
            with pytest.raises(InvalidInput):
                agencies.validate_credit_code(changed)


async def test_secret_is_stored_encrypted_and_bound_to_its_key(res: Resources) -> None:
    agency = await make_agency_with_key(res)
    async with res.sessions() as s:
        key = await s.get(ApiKey, agency.key_id)
        assert key is not None
        assert agency.secret.encode() not in key.secret_enc
        assert agencies.decrypt_secret(key) == agency.secret
        other = ApiKey(key_id="pk_other", agency_id=agency.agency_id, secret_enc=key.secret_enc)
        with pytest.raises(DecryptError):  # AES-GCM refuses a blob moved to another key id
            agencies.decrypt_secret(other)


async def test_rotation_keeps_two_live_keys_then_revoke(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)
    async with res.sessions() as s:
        new = await agencies.rotate_key(s, agency.key_id, grace=timedelta(hours=1))
        await s.commit()
    old_api = AgencyClient(client, agency.key_id, agency.secret)
    new_api = AgencyClient(client, new.key_id, new.secret)
    assert (await old_api.get("/v1/bills")).status_code == 200
    assert (await new_api.get("/v1/bills")).status_code == 200
    async with res.sessions() as s:
        with pytest.raises(Conflict) as exc:
            await agencies.rotate_key(s, new.key_id)
        assert exc.value.code == "rotation_in_progress"
    async with res.sessions() as s:
        with pytest.raises(Conflict):
            await agencies.create_key(s, agency.agency_id)
    async with res.sessions() as s:
        await agencies.revoke_key(s, agency.key_id)
        await s.commit()
    denied = await old_api.get("/v1/bills")
    assert denied.status_code == 401
    assert denied.json()["code"] == "auth_key"
    assert (await new_api.get("/v1/bills")).status_code == 200


async def test_rotation_grace_expires(res: Resources, client: AsyncTestClient[Litestar]) -> None:
    agency = await make_agency_with_key(res)
    async with res.sessions() as s:
        await agencies.rotate_key(s, agency.key_id, grace=timedelta(seconds=0))
        await s.commit()
    old_api = AgencyClient(client, agency.key_id, agency.secret)
    assert (await old_api.get("/v1/bills")).status_code == 401


async def test_key_use_is_recorded_once_a_minute_and_only_when_authenticated(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)

    async def last_used() -> object:
        async with res.sessions() as s:
            return await s.scalar(select(ApiKey.last_used_at).where(ApiKey.key_id == agency.key_id))

    forged = AgencyClient(client, agency.key_id, "not-the-secret")
    assert (await forged.get("/v1/bills")).status_code == 401
    assert await last_used() is None  # a failed signature is not a use
    api = AgencyClient(client, agency.key_id, agency.secret)
    assert (await api.get("/v1/bills")).status_code == 200
    first = await last_used()
    assert first is not None
    assert (await api.get("/v1/bills")).status_code == 200
    assert await last_used() == first  # within the minute: no second write
    async with res.sessions() as s:  # a minute later, the next use moves it
        await s.execute(
            update(ApiKey).values(last_used_at=ApiKey.last_used_at - timedelta(minutes=2))
        )
        await s.commit()
    assert (await api.get("/v1/bills")).status_code == 200
    assert await last_used() > first  # type: ignore[operator]


async def test_inactive_agency_cannot_authenticate(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)
    async with res.sessions() as s:
        await s.execute(update(Agency).values(active=False))
        await s.commit()
    assert (
        await AgencyClient(client, agency.key_id, agency.secret).get("/v1/bills")
    ).status_code == 401


async def test_nonce_falls_back_to_postgres_when_redis_is_down(res: Resources) -> None:
    agency = await make_agency_with_key(res)
    dead = KV.from_url("redis://127.0.0.1:9/0", connect_timeout=0.5)
    broken = dataclasses.replace(res, redis=dead)
    ts = int(time.time())
    header = authorization_header(
        agency.key_id,
        agency.secret,
        method="GET",
        path="/v1/bills",
        query="",
        body=b"",
        ts=ts,
        nonce="fallback-nonce-0001",
    )
    kw = {"method": "GET", "path": "/v1/bills", "query": "", "authorization": header, "body": b""}
    try:
        principal = await verify(broken, **kw)  # type: ignore[arg-type]
        assert principal.agency_id == agency.agency_id
        with pytest.raises(Unauthorized) as exc:
            await verify(broken, **kw)  # type: ignore[arg-type]
        assert exc.value.code == "auth_replay"
    finally:
        await dead.aclose()
    async with res.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT key_id, nonce FROM auth_nonces"))).all()
    assert [tuple(r) for r in rows] == [(agency.key_id, "fallback-nonce-0001")]
    # Redis is back: the nonce spent during the outage is still spent.
    with pytest.raises(Unauthorized) as exc:
        await verify(res, **kw)  # type: ignore[arg-type]
    assert exc.value.code == "auth_replay"


def test_catalogue_validation() -> None:
    base = catalogue.DEMO_ITEMS[0]
    bad = [
        (dataclasses.replace(base, split_bp={2: 5_000, 3: 4_999}), "split_not_100_percent"),
        (dataclasses.replace(base, split_bp={7: 10_000}), "split_invalid"),
        (dataclasses.replace(base, budget_subject="10305010100"), "budget_subject_invalid"),
        (dataclasses.replace(base, category="GIFT"), "category_unknown"),
        (dataclasses.replace(base, min_amount=500, max_amount=100), "amount_rule_invalid"),
        (dataclasses.replace(base, fixed_amount=100), "amount_rule_invalid"),
        (
            dataclasses.replace(catalogue.DEMO_ITEMS[2], late_fee_rule="FINE_DAILY_3PCT"),
            "late_fee_only_for_fines",
        ),
    ]
    for spec, code in bad:
        with pytest.raises(InvalidInput) as exc:
            catalogue.validate_item(spec)
        assert exc.value.code == code
    for spec in catalogue.DEMO_ITEMS:
        assert catalogue.validate_item(spec) is spec
        assert sum(spec.split_bp.values()) == 10_000
    fines = [s for s in catalogue.DEMO_ITEMS if s.category == "FINE"]
    assert {s.budget_subject for s in fines} == {"103050101001"}
    acct = {s.code: s.fixed_amount for s in catalogue.DEMO_ITEMS if "ACCT" in s.code}
    assert acct == {"EXAM-ACCT-JUNIOR": 6_000, "EXAM-ACCT-SENIOR": 8_000}


async def test_transition_is_guarded_and_recorded(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    agency = await make_agency_with_key(res)
    api = AgencyClient(client, agency.key_id, agency.secret)
    bill_id = uuid.UUID((await api.post("/v1/bills", json=bill_body("T-1"))).json()["id"])
    actor = Actor("system", "test")
    async with res.sessions() as s:
        with pytest.raises(IllegalTransition):  # not an edge of the machine
            await svc.transition(s, bill_id, expected="ISSUED", target="SETTLED", actor=actor)
        with pytest.raises(IllegalTransition):  # an edge, but the bill is not in that state
            await svc.transition(s, bill_id, expected="PAID", target="SETTLED", actor=actor)
        await svc.transition(
            s,
            bill_id,
            expected="ISSUED",
            target="PAID",
            actor=actor,
            values={"paid_amount": 20_000},
        )
        await s.commit()
    async with res.sessions() as s:
        bill = await s.get(Bill, bill_id)
        assert bill is not None
        assert (bill.status, bill.paid_amount) == ("PAID", 20_000)
        events = await s.scalar(select(func.count()).where(BillEvent.bill_id == bill_id))
        assert events == 2


def test_cli_manages_the_catalogue(res: Resources) -> None:
    runner = CliRunner()
    assert runner.invoke(cli.main, ["item", "seed-demo"]).exit_code == 0
    ok = runner.invoke(
        cli.main,
        ["item", "add", "--code", "X-1", "--name", "测试费", "--category", "OTHER",
         "--subject", "103040100199", "--split", "2:6000,3:4000", "--fixed", "500"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        cli.main,
        ["item", "add", "--code", "X-2", "--name", "n", "--category", "OTHER",
         "--subject", "103040100199", "--split", "2:6000,3:3000", "--fixed", "500"],
    )  # fmt: skip
    assert bad.exit_code != 0
    assert "split_not_100_percent" in bad.output
    listing = runner.invoke(cli.main, ["item", "list"]).output
    assert "X-1" in listing
    assert "FINE-ROAD-TRAFFIC" in listing
    assert "X-2" not in listing


def test_cli_creates_agency_and_keys(res: Resources) -> None:
    runner = CliRunner()
    out = runner.invoke(
        cli.main,
        [
            "agency",
            "create",
            "--credit-code",
            "91350100M000100Y43",
            "--name",
            "测试局",
            "--region",
            "350100",
        ],
    )
    assert out.exit_code == 0, out.output
    agency_id = out.output.split("agency ")[1].split()[0]
    assert "secret sk_" in out.output
    listing = runner.invoke(cli.main, ["agency", "list"])
    assert "91350100M000100Y43" in listing.output
    bad = runner.invoke(
        cli.main,
        [
            "agency",
            "create",
            "--credit-code",
            "91350100M000100Y44",
            "--name",
            "x",
            "--region",
            "350100",
        ],
    )
    assert bad.exit_code != 0
    assert "credit_code_check_failed" in bad.output
    key_id = out.output.split("key id ")[1].split()[0]
    rotated = runner.invoke(cli.main, ["agency", "key", "rotate", key_id])
    assert rotated.exit_code == 0, rotated.output
    revoked = runner.invoke(cli.main, ["agency", "key", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    missing_item = runner.invoke(cli.main, ["agency", "add-item", agency_id, "NOPE"])
    assert "item_not_found" in missing_item.output


async def test_demo_seed_is_idempotent_and_prints_working_credentials(
    res: Resources, client: AsyncTestClient[Litestar]
) -> None:
    first = await seed(res)
    second = await seed(res)
    async with res.sessions() as s:
        bills = await s.scalar(select(func.count()).select_from(Bill))
        agencies_n = await s.scalar(select(func.count()).select_from(Agency))
    assert (bills, agencies_n) == (3, 2)
    creds = [line for line in first if line.startswith("demo agency")]
    assert creds == [line for line in second if line.startswith("demo agency")]
    key_id = creds[0].split("key=")[1].split()[0]
    secret = creds[0].split("secret=")[1].split()[0]
    listing = await AgencyClient(client, key_id, secret).get("/v1/bills")
    assert listing.status_code == 200
    assert {b["agency_bill_no"] for b in listing.json()["items"]} == {
        "DEMO-JJ-0001",
        "DEMO-JJ-0002",
    }
    overdue = next(b for b in listing.json()["items"] if b["agency_bill_no"] == "DEMO-JJ-0002")
    assert overdue["amount_due_today"]["late_fee"] > 0
    assert any("payment code" in line for line in first)
