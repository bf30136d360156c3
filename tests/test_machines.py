"""The state machines as data: sources, the Mermaid text `paygate states` prints, and the
one writer of bill events."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from billing import events as bill_events
from billing.bills import BillingConfig, Line, NewBill, Payer, cancel_bill, issue_bills
from billing.events import Sql
from billing.models import Bill, BillEvent
from billing.states import BILL, BillStatus
from enotes.states import ENOTE
from gateway.cli import main
from gateway.cli.states import MACHINES
from gateway.state import Resources
from kernel.audit import Actor
from kernel.clock import shanghai_today
from kernel.errors import IllegalTransition
from kernel.states import sql_in
from payments import refunds
from payments.confirm import ConfirmOutcome, confirm_payment
from payments.models import Receipt
from payments.states import ATTEMPT, REFUND
from settlement.states import DEPOSIT_BATCH, DISCREPANCY
from tests.factories import make_agency, make_item
from tests.payments_support import open_attempt

ROOT = Path(__file__).resolve().parent.parent
_WRITES_BILL_EVENTS = re.compile(r"INSERT\s+INTO\s+bill_events|(?<!class )BillEvent\(", re.I)
_EDGE = re.compile(r"^    (\[\*\]|[A-Z_]+) --> (\[\*\]|[A-Z_]+)$")


def test_sources_are_the_states_with_an_edge_into_the_target() -> None:
    assert BILL.sources(BillStatus.SETTLED) == {"PAID", "PARTIALLY_REFUNDED"}
    assert BILL.sources(BillStatus.PAID) == {"ISSUED"}
    assert DISCREPANCY.sources("RESOLVED") == {"HELD", "OPEN"} == DISCREPANCY.live
    for machine in MACHINES.values():
        for target in {d for _, d in machine.edges}:
            assert machine.sources(target) == {s for s, d in machine.edges if d == target}
            assert all(target in machine.targets(s) for s in machine.sources(target))
    # Only a card terminal's reversal or void takes a bill back to ISSUED.
    assert BILL.sources(BillStatus.ISSUED) == {"PAID"}
    with pytest.raises(ValueError, match="nothing may become CREATED"):
        ATTEMPT.sources("CREATED")


def test_sql_in_renders_states_and_refuses_anything_else() -> None:
    assert sql_in(BILL.sources(BillStatus.SETTLED)) == "('PAID', 'PARTIALLY_REFUNDED')"
    with pytest.raises(ValueError, match="not state names"):
        sql_in(["PAID'; DROP TABLE bills; --"])
    with pytest.raises(ValueError, match="not state names"):
        sql_in([])


def _parse(text: str) -> dict[str, tuple[set[str], set[tuple[str, str]], set[str]]]:
    """Mermaid text back into (initial, edges, terminal) per titled diagram."""
    out: dict[str, tuple[set[str], set[tuple[str, str]], set[str]]] = {}
    for block in text.split("\n\n"):
        title = re.search(r"^title: (\w+)$", block, re.MULTILINE)
        assert title is not None, block
        lines = block.split("\n")
        assert lines[3] == "stateDiagram-v2", block
        initial, edges, terminal = set(), set(), set()
        for line in lines[4:]:
            m = _EDGE.match(line)
            assert m is not None, line
            src, dst = m.groups()
            if src == "[*]":
                initial.add(dst)
            elif dst == "[*]":
                terminal.add(src)
            else:
                edges.add((src, dst))
        out[title.group(1)] = (initial, edges, terminal)
    return out


def test_paygate_states_prints_every_machine_as_mermaid() -> None:
    result = CliRunner().invoke(main, ["states"])
    assert result.exit_code == 0, result.output
    parsed = _parse(result.output.rstrip("\n"))
    machines = (BILL, ATTEMPT, REFUND, ENOTE, DEPOSIT_BATCH, DISCREPANCY)
    assert set(parsed) == {m.name for m in machines}
    for m in machines:
        assert parsed[m.name] == (set(m.initial), set(m.edges), set(m.terminal)), m.name
        assert m.initial, f"{m.name} names no initial state"

    one = CliRunner().invoke(main, ["states", "--markdown", "bill"])
    assert one.exit_code == 0
    assert one.output.startswith("```mermaid\n---\ntitle: bill\n---\nstateDiagram-v2\n")
    assert "    ISSUED --> PAID\n" in one.output
    assert one.output.rstrip("\n").endswith("```")
    assert CliRunner().invoke(main, ["states", "nope"]).exit_code != 0


def test_the_installed_command_prints_them_too() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "states", "deposit_batch"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert out == (
        "---\ntitle: deposit_batch\n---\nstateDiagram-v2\n"
        "    [*] --> DRAFT\n    DRAFT --> EXPORTED\n    EXPORTED --> [*]\n"
    )


def test_bill_event_sql_takes_its_edge_from_the_machine() -> None:
    sql = bill_events.insert_sql(
        "moved",
        bill_id=Sql("id"),
        src=BillStatus.PAID,
        dst=BillStatus.SETTLED,
        actor_type="system",
        actor_id=Sql(":actor"),
        reason="it's settled",
    )
    assert sql == (
        "INSERT INTO bill_events (bill_id, from_status, to_status, actor_type, actor_id,"
        " reason, detail) SELECT id, 'PAID', 'SETTLED', 'system', :actor, 'it''s settled',"
        " '{}'::jsonb FROM moved"
    )
    with pytest.raises(IllegalTransition):
        bill_events.insert_sql(
            "x",
            bill_id=Sql("id"),
            src=BillStatus.EXPIRED,
            dst=BillStatus.PAID,
            actor_type="system",
            actor_id="t",
            reason="r",
        )
    with pytest.raises(IllegalTransition):  # a bill is created ISSUED, nothing else
        bill_events.insert_sql(
            "x",
            bill_id=Sql("id"),
            src=None,
            dst=BillStatus.PAID,
            actor_type="system",
            actor_id="t",
            reason="r",
        )


def test_bill_events_are_written_only_by_billing_events() -> None:
    """Every bill status change writes its event through billing/events.py: no other
    module builds a BillEvent or an INSERT INTO bill_events by hand."""
    writers = []
    for room in (
        "kernel",
        "channels",
        "billing",
        "ledger",
        "payments",
        "enotes",
        "settlement",
        "gateway",
    ):
        for path in (ROOT / room).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if _WRITES_BILL_EVENTS.search(text):
                writers.append(str(path.relative_to(ROOT)))
    assert writers == ["billing/events.py"]


def test_docs_states_md_is_what_paygate_states_prints() -> None:
    """docs/states.md shows the machines as they are: regenerate it with
    `paygate states --markdown` (below its introduction) when a machine changes."""
    from gateway.cli.states import render

    doc = (ROOT / "docs" / "states.md").read_text(encoding="utf-8")
    diagrams = doc[doc.index("```mermaid") :]
    assert diagrams.rstrip("\n") == render((), markdown=True)


async def test_each_bills_history_chains_from_creation_to_its_status(res: Resources) -> None:
    """Issued set-based, paid by the one-statement confirmation, refunded in full (Python),
    another cancelled (transition): every event is an edge of BILL, each starts where the
    previous ended, and the last ends at the bill's status."""
    now = datetime.now(UTC)
    async with res.sessions() as s:
        item = await make_item(s, code=f"ITEM-{secrets.token_hex(3)}")
        agency = await make_agency(s, items=[item])
        await s.commit()
        issued = await issue_bills(
            s,
            agency.id,
            [
                NewBill(
                    agency_bill_no=f"H-{n}",
                    payer=Payer("PERSON", "张三"),
                    lines=(Line(item.code, 1, 5_000),),
                    due_date=shanghai_today(now) + timedelta(days=5),
                    expires_at=now + timedelta(days=10),
                )
                for n in (1, 2)
            ],
            config=BillingConfig(serial_key=res.settings.billing.serial_key),
            actor=Actor("agency", "key-1"),
        )
        await s.commit()
        paid_id, cancelled_id = (r.bill_id for r in issued)
        assert paid_id is not None
        assert cancelled_id is not None
        bill = await s.get_one(Bill, paid_id)
    attempt = await open_attempt(res.sessions, bill, channel="bank:102")
    paid = await confirm_payment(
        res.sessions,
        res.redis,
        attempt_id=attempt.id,
        channel_trade_no="T-1",
        amount=5_000,
        paid_at=now,
        source="test",
        bill_id=paid_id,
        channel="bank:102",
    )
    assert paid.outcome == ConfirmOutcome.APPLIED
    async with res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == paid_id))
        assert receipt is not None
        refund = await refunds.request_refund(
            s, receipt_id=receipt.id, amount=5_000, reason="paid twice", actor=Actor("finance", "w")
        )
        await refunds.mark_processing(s, refund.id)
        await refunds.complete_refund(s, refund.id, succeeded=True)
        await cancel_bill(s, agency.id, cancelled_id, actor=Actor("agency", "key-1"))
        await s.commit()

    async with res.sessions() as s:
        events = (
            await s.execute(
                select(BillEvent.bill_id, BillEvent.from_status, BillEvent.to_status).order_by(
                    BillEvent.id
                )
            )
        ).all()
        statuses = dict((await s.execute(select(Bill.id, Bill.status))).all())  # type: ignore[arg-type]
    paths: dict[uuid.UUID, list[str]] = {}
    for bill_id, src, dst in events:
        path = paths.setdefault(bill_id, [])
        if src is None:
            assert not path
            assert dst in BILL.initial
        else:
            assert path[-1:] == [src], (path, src, dst)
            assert BILL.allowed(src, dst), (path, src, dst)
        path.append(dst)
    assert paths == {
        paid_id: ["ISSUED", "PAID", "REFUNDED"],
        cancelled_id: ["ISSUED", "CANCELLED"],
    }
    assert {b: p[-1] for b, p in paths.items()} == statuses
