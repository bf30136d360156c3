"""A card payment taken back (void 撤销, reversal 冲正) after the worker had issued its e-note or
told the agency: the note is red-lettered exactly once, the agency hears
`bill.payment_reversed`; an issuer racing the take-back ends with no valid note either.

The terminal is the POS simulator over real HTTP; the e-note and webhook jobs are the
worker's own functions on the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from billing.webhook_delivery import ingest
from enotes.models import ENote
from enotes.service import EnoteContext, run_issue_job, run_red_job
from enotes.signing_lines import Signed, SigningLine
from gateway.enotes import enote_context
from gateway.settings import Settings
from kernel.audit import Actor
from kernel.errors import Conflict
from kernel.models import OutboxMessage
from payments.models import Receipt, Refund
from payments.refunds import request_refund
from tests.pos_support import UNPAID, PosWorld, pos, unpaid

__all__ = ["pos"]  # the fixture, used by name below

ADMIN = Actor("finance", "test")


def code(sent: dict[str, Any]) -> str:
    answer = sent["answer"]
    assert isinstance(answer, dict)
    return str(answer["code"])


async def _receipt(world: PosWorld, bill_id: uuid.UUID) -> Receipt:
    async with world.res.sessions() as s:
        receipt = await s.scalar(select(Receipt).where(Receipt.bill_id == bill_id))
        assert receipt is not None
        return receipt


async def _notes(world: PosWorld, receipt_id: uuid.UUID) -> list[ENote]:
    async with world.res.sessions() as s:
        return list(
            (
                await s.scalars(
                    select(ENote).where(ENote.receipt_id == receipt_id).order_by(ENote.kind)
                )
            ).all()
        )


async def _messages(world: PosWorld, prefix: str) -> list[OutboxMessage]:
    async with world.res.sessions() as s:
        return list(
            (
                await s.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.key.startswith(prefix))
                    .order_by(OutboxMessage.id)
                )
            ).all()
        )


async def _drain_red(world: PosWorld, ctx: EnoteContext) -> None:
    """Run the red-letter job until nothing is due (a NotReady message is made due again)."""
    for _ in range(5):
        async with world.res.sessions() as s, s.begin():
            await s.execute(
                text(
                    "UPDATE outbox SET available_at = now()"
                    " WHERE topic = 'enote.red' AND processed_at IS NULL"
                )
            )
        if not await run_red_job(world.res.sessions, ctx):
            return


async def _assert_red_lettered(world: PosWorld, receipt_id: uuid.UUID) -> tuple[ENote, ENote]:
    notes = await _notes(world, receipt_id)
    assert [(n.kind, n.status) for n in notes] == [("BLUE", "RED_LETTERED"), ("RED", "VALID")]
    blue, red = notes
    assert red.total_amount == -blue.total_amount < 0
    assert (red.original_id, red.refund_id) == (blue.id, None)
    return blue, red


async def _verify_page(world: PosWorld, note: ENote) -> tuple[str, str]:
    query = {"code": note.note_code, "number": note.note_number, "check": note.check_code}
    async with httpx.AsyncClient(base_url=world.gateway_url) as http:
        api = (await http.get("/v1/enotes/verify", params=query)).json()
        page = (await http.get("/enotes/verify", params=query)).text
    return str(api["status"]), page


async def test_void_after_the_note_and_the_webhook_red_letters_and_tells_the_agency(
    pos: PosWorld, settings: Settings
) -> None:
    ctx = enote_context(settings)
    bill = await pos.bill(12_345)
    out = await pos.sim.sale(bill.payment_code, 12_345)
    assert code(out["sale"]) == "00"
    assert await run_issue_job(pos.res.sessions, ctx) == 1
    await ingest(pos.res.sessions)  # the bill.paid webhook became an event for the agency
    receipt = await _receipt(pos, bill.id)
    [blue] = await _notes(pos, receipt.id)
    assert (await _verify_page(pos, blue))[0] == "valid"

    voided = await pos.sim.void(out["trace_no"])
    assert voided.answer is not None
    assert voided.answer["code"] == "00"
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID  # bill ISSUED, ledger verified and back to zero
    assert state["receipts"] == {"REVERSED": 1}

    # The follow-ups were queued with the void: one red-letter request, one webhook.
    [red_request] = await _messages(pos, "enote.red:")
    assert red_request.payload["receipt_id"] == str(receipt.id)
    [event] = await _messages(pos, "bill.payment_reversed:")
    assert event.payload["event"] == "bill.payment_reversed"
    assert event.payload["bill_id"] == str(bill.id)
    data = event.payload["data"]
    assert (data["receipt_id"], data["amount"], data["bill_status"]) == (
        str(receipt.id),
        12_345,
        "ISSUED",
    )
    assert (data["payment_code"], data["channel"]) == (bill.payment_code, "pos")

    await _drain_red(pos, ctx)
    blue, red = await _assert_red_lettered(pos, receipt.id)
    assert red.total_amount == -12_345
    status, page = await _verify_page(pos, blue)
    assert status == "red_lettered"
    assert "已冲红" in page
    assert (await _verify_page(pos, red))[0] == "valid"

    # Exactly once: the job again, the void repeated, the webhook ingested: nothing more.
    await _drain_red(pos, ctx)
    body, headers = pos.sim.signed("void", voided.request)
    assert code((await pos.sim.post_signed("void", body, headers)).__dict__) == "00"
    await _drain_red(pos, ctx)
    assert len(await _notes(pos, receipt.id)) == 2
    assert len(await _messages(pos, "bill.payment_reversed:")) == 1
    await ingest(pos.res.sessions)
    async with pos.res.sessions() as s:
        events = (
            await s.scalars(
                text("SELECT event FROM webhook_events WHERE bill_id = :b ORDER BY created_at"),
                {"b": bill.id},
            )
        ).all()
    assert list(events) == ["bill.paid", "enote.issued", "bill.payment_reversed", "enote.issued"]

    # Paid again: the agency hears bill.paid for the new payment, and it gets a new note.
    again = await pos.sim.sale(bill.payment_code, 12_345)
    assert code(again["sale"]) == "00"
    assert len(await _messages(pos, "bill.paid:")) == 2
    assert await run_issue_job(pos.res.sessions, ctx) == 1
    async with pos.res.sessions() as s:
        valid = (
            await s.scalars(
                select(ENote.kind).where(ENote.bill_id == bill.id, ENote.status == "VALID")
            )
        ).all()
    assert sorted(valid) == ["BLUE", "RED"]


async def test_reversal_after_the_note_red_letters_it(pos: PosWorld, settings: Settings) -> None:
    ctx = enote_context(settings)
    bill = await pos.bill(20_000)
    out = await pos.sim.sale(bill.payment_code, 20_000)
    assert code(out["sale"]) == "00"
    assert await run_issue_job(pos.res.sessions, ctx) == 1
    receipt = await _receipt(pos, bill.id)

    reversed_ = await pos.sim.reverse(out["trace_no"])
    assert code(reversed_.__dict__) == "00"
    state = await pos.state(bill.id)
    assert unpaid(state) == UNPAID
    assert state["receipts"] == {"REVERSED": 1}
    # The bill.paid webhook was never taken: it is withdrawn and nothing follows it.
    assert await _messages(pos, "bill.paid:") == []
    assert await _messages(pos, "bill.payment_reversed:") == []

    await _drain_red(pos, ctx)
    blue, red = await _assert_red_lettered(pos, receipt.id)
    assert red.total_amount == -20_000
    assert (await _verify_page(pos, blue))[0] == "red_lettered"


async def test_taken_back_before_the_worker_issues_no_note_at_all(
    pos: PosWorld, settings: Settings
) -> None:
    ctx = enote_context(settings)
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount)
    voided = await pos.sim.void(out["trace_no"])
    assert voided.answer is not None
    assert voided.answer["code"] == "00"
    receipt = await _receipt(pos, bill.id)
    # Issue job, webhook: withdrawn; no red-letter request since no note can ever exist.
    assert await _messages(pos, f"enote.issue:{receipt.id}") == []
    assert await _messages(pos, "enote.red:") == []
    assert await run_issue_job(pos.res.sessions, ctx) == 0
    assert await _notes(pos, receipt.id) == []

    # The void gave the money back: a refund of it is refused and writes nothing.
    async with pos.res.sessions() as s, s.begin():
        with pytest.raises(Conflict) as refused:
            await request_refund(
                s, receipt_id=receipt.id, amount=receipt.amount, reason="t", actor=ADMIN
            )
    assert refused.value.code == "payment_reversed"
    async with pos.res.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Refund)) == 0
        assert (await s.get_one(Receipt, receipt.id)).refunded_amount == 0


class _GatedLine:
    """The real signing line, held at the gate: the issuer has read the receipt, taken its
    numbers and holds the counter lock, but has written no note yet."""

    def __init__(self, inner: SigningLine) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.go = threading.Event()
        self.pool = ThreadPoolExecutor(1)

    def sign(self, contents: Sequence[bytes]) -> Future[list[Signed]]:
        def gated() -> list[Signed]:
            self.entered.set()
            self.go.wait(30)
            return self.inner.sign(contents).result(30)

        return self.pool.submit(gated)

    def close(self) -> None:
        self.pool.shutdown(wait=False)


async def test_issue_in_flight_while_the_payment_is_taken_back(
    pos: PosWorld, settings: Settings
) -> None:
    """The worker took the issue job and read the receipt as a payment; the void commits
    (not waiting for the worker); then the note commits, and is red-lettered."""
    ctx = enote_context(settings)
    gate = _GatedLine(ctx.signing_line())
    gated = EnoteContext(ctx.signers, ctx.config, line=gate)
    bill = await pos.bill(30_000)
    out = await pos.sim.sale(bill.payment_code, 30_000)
    assert code(out["sale"]) == "00"
    receipt = await _receipt(pos, bill.id)

    issuing = asyncio.create_task(run_issue_job(pos.res.sessions, gated))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    voided = await asyncio.wait_for(pos.sim.void(out["trace_no"]), 10)  # not blocked
    assert voided.answer is not None
    assert voided.answer["code"] == "00"
    assert len(await _messages(pos, "enote.red:")) == 1
    assert unpaid(await pos.state(bill.id)) == UNPAID

    gate.go.set()
    assert await asyncio.wait_for(issuing, 30) == 1
    gate.close()
    [blue] = await _notes(pos, receipt.id)
    assert blue.status == "VALID"  # issued after the void: the red-letter follows
    await _drain_red(pos, ctx)
    blue, _ = await _assert_red_lettered(pos, receipt.id)
    assert (await _verify_page(pos, blue))[0] == "red_lettered"
    assert unpaid(await pos.state(bill.id)) == UNPAID


async def test_issue_job_taken_but_receipt_read_after_the_void_issues_nothing(
    pos: PosWorld, settings: Settings
) -> None:
    """The other order: the worker holds the job but reads the receipt after the void."""
    ctx = enote_context(settings)
    bill = await pos.bill()
    out = await pos.sim.sale(bill.payment_code, bill.principal_amount)
    receipt = await _receipt(pos, bill.id)
    async with pos.res.sessions() as s, s.begin():
        held = await s.scalar(
            select(OutboxMessage)
            .where(OutboxMessage.key == f"enote.issue:{receipt.id}")
            .with_for_update()
        )
        assert held is not None
        voided = await asyncio.wait_for(pos.sim.void(out["trace_no"]), 10)  # not blocked
        assert voided.answer is not None
        assert voided.answer["code"] == "00"
        # While the job is open a note may still come: the request waits, is not dropped.
        [red_request] = await _messages(pos, "enote.red:")
        assert await run_red_job(pos.res.sessions, ctx) == 1
        async with pos.res.sessions() as s2:
            pending = await s2.get_one(OutboxMessage, red_request.id)
            assert pending.processed_at is None
            assert "may still be issued" in (pending.last_error or "")
    assert await run_issue_job(pos.res.sessions, ctx) == 1  # sees REVERSED: no note
    await _drain_red(pos, ctx)
    assert await _notes(pos, receipt.id) == []
    async with pos.res.sessions() as s:
        open_ = await s.scalar(
            text("SELECT count(*) FROM outbox WHERE processed_at IS NULL AND topic LIKE 'enote.%'")
        )
    assert open_ == 0
