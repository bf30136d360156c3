"""`paygate ledger verify`, `reconcile`, `settle` and `staff create` against the test DB."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from gateway.cli import main
from gateway.state import Resources
from kernel.models import StaffToken, StaffUser
from settlement.reconcile import reconcile
from tests.factories import make_agency, make_item
from tests.settle_helpers import (
    DAY,
    ledger_verified,  # noqa: F401 - fixture, used below
    line_for,
    paid_bill,
    seed_treasuries,
)

pytestmark = pytest.mark.usefixtures("ledger_verified")


async def _invoke(*args: str) -> Result:
    # The CLI runs its own event loop; give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


async def test_settle_export_and_verify_from_the_cli(res: Resources, tmp_path: Path) -> None:
    async with res.sessions() as s:
        await seed_treasuries(s)
        item = await make_item(s, split={2: 5000, 3: 5000})
        agency = await make_agency(s, items=[item])
        r = (await paid_bill(s, agency, item, 1001))[2]
        await s.commit()
    unreconciled = await _invoke("settle", "--date", DAY.isoformat())
    assert unreconciled.exit_code != 0
    await reconcile(
        res.sessions, channel="alipay", day=DAY, lines=[line_for(r)], today=DAY + timedelta(days=1)
    )
    out = tmp_path / "batches"
    settled = await _invoke("settle", "--date", DAY.isoformat(), "--export", "--out", str(out))
    assert settled.exit_code == 0, settled.output
    assert "1 receipts, 10.01 yuan, 0 treasury refunds, 2 batches" in settled.output
    csvs = sorted(out.glob("*.csv"))
    assert len(csvs) == 2
    assert sorted(p.read_text().splitlines()[0].rsplit(",", 1)[1] for p in csvs) == ["5.00", "5.01"]
    verified = await _invoke("ledger", "verify")
    assert verified.exit_code == 0, verified.output
    assert "ledger OK" in verified.output
    bad = await _invoke("reconcile", "--date", DAY.isoformat(), "--channel", "nowhere")
    assert bad.exit_code == 1
    assert "nowhere: FAILED" in bad.output


async def test_staff_create_prints_the_token_once_and_stores_its_hash(res: Resources) -> None:
    created = await _invoke("staff", "create", "--role", "auditor", "li")
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("pgs_")
    async with res.sessions() as s:
        user = await s.scalar(select(StaffUser).where(StaffUser.name == "li"))
        stored = (await s.scalars(select(StaffToken.token_hash))).all()
    assert user is not None
    assert user.role == "AUDITOR"
    assert token.encode() not in stored
    assert len(stored) == 1
    assert len(stored[0]) == 32


async def test_demo_seeds_treasuries_idempotently(res: Resources) -> None:
    from gateway.demo import seed
    from settlement.models import Treasury

    first = await seed(res)
    again = await seed(res)
    async with res.sessions() as s:
        count = len((await s.scalars(select(Treasury))).all())
    # Six budget levels for each demo region and each demo agency's region.
    assert count > 0
    assert count % 6 == 0
    assert any("treasuries" in line for line in first)
    assert not any("treasuries" in line for line in again)


async def test_refund_from_the_cli_is_guarded(res: Resources) -> None:
    async with res.sessions() as s:
        item = await make_item(s)
        agency = await make_agency(s, items=[item])
        r = (await paid_bill(s, agency, item, 1000))[2]
        await s.commit()
    too_much = await _invoke(
        "refund", "--receipt", str(r.id), "--amount", "1001", "--reason", "x", "--actor", "li"
    )
    assert too_much.exit_code == 1
    assert "exceeds_available" in too_much.output
    ok = await _invoke(
        "refund", "--receipt", str(r.id), "--amount", "400", "--reason", "x", "--actor", "li"
    )
    assert ok.exit_code == 0, ok.output
    assert "4.00 yuan via CHANNEL (REQUESTED)" in ok.output
