"""The terminal registry from the admin API and the CLI; mismatched batches reported."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from billing.models import Bill
from channels.money import yuan_to_fen
from channels.pos.simulator import SimTerminal
from gateway.cli import main
from gateway.demo import seed
from gateway.state import Resources
from kernel.staff import create_staff
from payments.pos import terminals
from tests.payments_support import bill_for_test
from tests.pos_support import PosWorld, pos
from tests.servers import ServerThread

__all__ = ["pos"]  # the fixture, used by name below

Client = AsyncTestClient[Litestar]


async def _invoke(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def _printed(out: Result) -> Any:
    """The simulator's pretty-printed JSON (the in-process server's log lines share stdout)."""
    assert out.exit_code == 0, out.output
    start = re.search(r"(?m)^\{$", out.output)
    assert start is not None, out.output
    return json.loads(out.output[start.start() :])


async def _token(res: Resources, role: str) -> dict[str, str]:
    async with res.sessions() as s:
        _, token = await create_staff(s, name=f"{role}-user", role=role)
        await s.commit()
    return {"Authorization": f"Bearer {token}"}


async def test_admin_api_registers_disables_and_lists_terminals(
    res: Resources, client: Client
) -> None:
    async with res.sessions() as s:
        agency, _, _ = await bill_for_test(s)
    admin, auditor = await _token(res, "admin"), await _token(res, "auditor")
    body = {
        "merchant_id": "898330170110009",
        "terminal_id": "POS00009",
        "agency_id": str(agency.id),
        "counter": "3号窗口",
    }
    r = await client.post("/v1/admin/pos/terminals", json=body, headers=auditor)
    assert r.status_code == 403
    r = await client.post("/v1/admin/pos/terminals", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert len(r.json()["key"]) == 64
    again = await client.post("/v1/admin/pos/terminals", json=body, headers=admin)
    assert (again.status_code, again.json()["code"]) == (409, "terminal_exists")
    bad = await client.post(
        "/v1/admin/pos/terminals", json=body | {"merchant_id": "1"}, headers=admin
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "merchant_id_malformed")

    off = await client.post(
        "/v1/admin/pos/terminals/898330170110009/POS00009/disable", headers=admin
    )
    assert off.status_code == 200
    assert off.json()["enabled"] is False
    listed = await client.get("/v1/admin/pos/terminals", headers=auditor)
    assert [(t["terminal_id"], t["enabled"]) for t in listed.json()] == [("POS00009", False)]
    assert (await client.get("/v1/admin/pos/terminals")).status_code == 401


async def test_cli_registers_disables_lists_and_reports_mismatches(pos: PosWorld) -> None:
    out = await _invoke(
        "pos",
        "register",
        "--merchant",
        "898330170110008",
        "--terminal",
        "POS00008",
        "--agency",
        str(pos.agency.id),
        "--counter",
        "4号窗口",
    )
    assert out.exit_code == 0, out.output
    assert "terminal key (load it now, it is not shown again): " in out.output
    out = await _invoke("pos", "disable", "--merchant", "898330170110008", "--terminal", "POS00008")
    assert out.exit_code == 0, out.output
    listed = await _invoke("pos", "list")
    assert "898330170110008 POS00008 DISABLED" in listed.output
    assert "POS00001 enabled" in listed.output

    bill = await pos.bill(500)
    sale = await pos.sim.sale(bill.payment_code, 500)
    mismatch = await pos.sim.settle(skip_traces=(sale["trace_no"],))
    assert mismatch.answer is not None
    assert mismatch.answer["code"] == "95"
    report = await _invoke("pos", "batches", "--mismatched")
    assert report.exit_code == 0, report.output
    assert '"status": "MISMATCHED"' in report.output
    assert f'"trace_no": "{sale["trace_no"]}"' in report.output


async def test_simulator_command_plays_a_terminal(pos: PosWorld, tmp_path: Path) -> None:
    bill = await pos.bill(700)
    common = [
        "simulator",
        "pos",
        "--gateway",
        pos.gateway_url,
        "--merchant",
        pos.sim.merchant,
        "--terminal",
        pos.sim.terminal,
        "--key",
        pos.sim.key.decode(),
        "--state-file",
        str(tmp_path / "terminal.json"),
    ]
    out = await _invoke(*common, "--lose-answer", "sale", bill.payment_code, "700")
    assert out.exit_code == 0, out.output
    doc = _printed(out)
    assert doc["sale"]["answer"] is None
    assert doc["reversal"]["answer"]["code"] == "00"
    out = await _invoke(*common, "sale", bill.payment_code, "700")
    doc = _printed(out)
    assert doc["sale"]["answer"]["code"] == "00"
    assert doc["trace_no"] == "000002"  # the journal carried the trace number over
    out = await _invoke(*common, "void", doc["trace_no"])
    assert _printed(out)["answer"]["code"] == "00"
    assert (await pos.state(bill.id))["bill"] == "ISSUED"


async def test_demo_seeds_a_terminal_whose_printed_key_pays_a_demo_bill(
    res: Resources, gateway_server: ServerThread
) -> None:
    await seed(res)
    lines = await seed(res)  # idempotent: one terminal, a fresh key printed each time
    command = next(line for line in lines if "paygate simulator pos" in line).split()
    key = command[command.index("--key") + 1]
    async with res.sessions() as s:
        assert len(await terminals.list_terminals(s)) == 1
        bill = await s.scalar(
            select(Bill).where(Bill.agency_bill_no == "DEMO-JJ-0001", Bill.status == "ISSUED")
        )
        assert bill is not None
    sim = SimTerminal(
        gateway_url=gateway_server.url,
        merchant=command[command.index("--merchant") + 1],
        terminal=command[command.index("--terminal") + 1],
        key=key.encode(),
    )
    try:
        asked = await sim.inquiry(bill.payment_code)
        assert asked.answer is not None
        amount = yuan_to_fen(asked.answer["data"]["amount"])
        out = await sim.sale(bill.payment_code, amount)
    finally:
        await sim.aclose()
    assert out["sale"]["answer"]["code"] == "00"
