"""Taking back a payment the channel undid before settlement (a card terminal's reversal
冲正 or void 撤销): the bill, its receipts and the ledger end as if it never happened.

- the attempt becomes REVERSED, so a confirmation still on its way can never apply it
  (REVERSED is not among the statuses the confirmation's guards accept);
- when it had paid the bill: the bill goes PAID → ISSUED (with its event), the receipt
  becomes kind REVERSED (kept as the record; it no longer counts as a payment, so the bill
  can be paid again), the receipt's ledger entry is reversed by its mirror image, and the
  e-note and the agency's `bill.paid` webhook still waiting in the outbox are withdrawn.
- what the payment's messages already set going is followed up, in the same transaction:
  an e-note issue job already done or in a worker's hands → an `enote.red` message (the
  e-note worker red-letters the note once it exists; a worker that reads the receipt after
  this commits sees it REVERSED and issues nothing); a `bill.paid` webhook already taken
  → a `bill.payment_reversed` webhook telling the agency the bill is payable again.
  Messages a worker holds are skipped, never waited for: the worker's own writes (the
  note's foreign keys) wait for the locks this transaction holds.

Only a payment still CONFIRMED (not swept to the treasury, nothing refunded) of a PAID
bill can be taken back; later, money goes back as a refund. Runs inside the caller's
transaction; locks the bill, then the attempt (the order every confirmation locks them).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

import ledger
from billing import events as bill_events
from billing.events import Sql
from billing.states import BILL, BillStatus
from billing.webhooks import TOPIC as WEBHOOK_TOPIC
from kernel import outbox
from kernel.clock import SHANGHAI
from kernel.outbox import Topic
from payments.confirm import paid_event_key
from payments.refunds import TOPIC_RED_LETTER
from payments.states import ATTEMPT, AttemptStatus

__all__ = [
    "REVERSED_EVENT",
    "UndoResult",
    "Undone",
    "undo_payment",
]

log = structlog.get_logger(__name__)

REVERSED_EVENT = "bill.payment_reversed"
"""The agency's webhook when a payment it was told of (`bill.paid`) is taken back."""


class Undone(StrEnum):
    NOT_PAID = "NOT_PAID"
    """The attempt had not succeeded yet: it is REVERSED now and never will."""
    UNDONE = "UNDONE"
    """The payment was taken back: bill ISSUED, receipt REVERSED, ledger mirrored."""
    ALREADY = "ALREADY"
    """Reversed before: nothing changed."""
    TOO_LATE = "TOO_LATE"
    """Settled, refunded or otherwise past taking back: nothing changed."""


@dataclass(frozen=True, slots=True)
class UndoResult:
    outcome: Undone
    bill_id: uuid.UUID
    payment_code: str
    receipt_id: uuid.UUID | None = None


_LOCK = text(
    "SELECT b.id AS bill_id, b.status AS bill_status, b.payment_code, b.agency_id,"
    " b.agency_bill_no, a.status, a.channel"
    " FROM bills b JOIN payment_attempts a ON a.bill_id = b.id"
    " WHERE a.id = :attempt_id ORDER BY b.id FOR UPDATE OF b, a"
)
_RECEIPT = text(
    "SELECT id, kind, status, refunded_amount, amount FROM receipts"
    " WHERE attempt_id = :attempt_id"
    " FOR UPDATE"
)
_ENTRY = text(
    "SELECT e.id, e.business_date, a.code, l.amount FROM journal_entries e"
    " JOIN journal_lines l ON l.entry_id = e.id JOIN ledger_accounts a ON a.id = l.account_id"
    " WHERE e.kind = 'receipt' AND e.ref = :ref"
)


_ISSUED, _PAID = BillStatus.ISSUED.value, BillStatus.PAID.value
_UNDO = text(
    "WITH r AS (UPDATE receipts SET kind = 'REVERSED' WHERE id = :receipt_id),"  # noqa: S608 - constants only
    f" b AS (UPDATE bills SET status = '{_ISSUED}', paid_amount = 0, paid_at = NULL,"
    f" updated_at = now() WHERE id = :bill_id AND status = '{_PAID}' RETURNING id),"
    " ev AS ("
    + bill_events.insert_sql(
        "b",
        bill_id=Sql("id"),
        src=BillStatus.PAID,
        dst=BillStatus.ISSUED,
        actor_type="system",
        actor_id=Sql(":actor"),
        reason="payment taken back by the channel",
        detail=Sql("CAST(:detail AS jsonb)"),
    )
    + "),"  # noqa: S608 - constants only
    " au AS (INSERT INTO audit_log (actor_type, actor_id, action, object_type,"
    " object_id, detail) VALUES ('system', :actor, 'payment.reversed', 'bill',"
    " :bill_text, CAST(:detail AS jsonb))),"
    # What the payment queued and nobody has taken yet is withdrawn; one a worker holds
    # is skipped (SKIP LOCKED: waiting for it could deadlock with the worker's writes).
    " gone AS (DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
    " WHERE processed_at IS NULL AND key IN (:webhook_key, :enote_key)"
    " FOR UPDATE SKIP LOCKED) RETURNING id)"
    # Every part of one statement reads the same snapshot: `outbox` below still shows the
    # rows `gone` deleted, so what is left over is what a worker took or has done.
    " INSERT INTO outbox (topic, key, payload)"
    " SELECT CAST(:webhook AS varchar), :reversed_key, CAST(:reversed AS jsonb) FROM outbox o"
    " WHERE o.key = :webhook_key AND o.id NOT IN (SELECT id FROM gone)"
    " UNION ALL"
    " SELECT CAST(:red AS varchar), :red_key, CAST(:red_payload AS jsonb) FROM outbox o"
    " WHERE o.key = :enote_key AND o.id NOT IN (SELECT id FROM gone)"
    f" ON CONFLICT ON CONSTRAINT {outbox.KEY_CONSTRAINT} DO NOTHING RETURNING topic"
)
"""The payment's writes undone as one statement (see the module doc); returns the topics of
the follow-up messages it queued."""


async def undo_payment(
    conn: AsyncConnection, *, attempt_id: uuid.UUID, reason: str, actor: str
) -> UndoResult | None:
    """Take back this attempt's payment (see the module doc); None for an unknown attempt."""
    row = (await conn.execute(_LOCK, {"attempt_id": attempt_id})).first()
    if row is None:
        return None
    bill_id, code = row.bill_id, row.payment_code
    if row.status == AttemptStatus.REVERSED:
        return UndoResult(Undone.ALREADY, bill_id, code)
    if row.status != AttemptStatus.SUCCEEDED:
        if not ATTEMPT.allowed(row.status, AttemptStatus.REVERSED):
            return UndoResult(Undone.TOO_LATE, bill_id, code)
        await _attempt_reversed(conn, attempt_id, row.status)
        return UndoResult(Undone.NOT_PAID, bill_id, code)
    receipt = (await conn.execute(_RECEIPT, {"attempt_id": attempt_id})).first()
    if (
        receipt is None
        or receipt.kind != "PAYMENT"
        or receipt.status != "CONFIRMED"
        or receipt.refunded_amount
        or row.bill_status != BillStatus.PAID
    ):
        return UndoResult(Undone.TOO_LATE, bill_id, code, receipt.id if receipt else None)
    BILL.check(BillStatus.PAID, BillStatus.ISSUED)
    await _attempt_reversed(conn, attempt_id, AttemptStatus.SUCCEEDED)
    detail = {"attempt_id": str(attempt_id), "receipt_id": str(receipt.id), "reason": reason}
    reversed_event = {
        "event": REVERSED_EVENT,
        "agency_id": str(row.agency_id),
        "bill_id": str(bill_id),
        "data": {
            "bill_id": str(bill_id),
            "agency_bill_no": row.agency_bill_no,
            "payment_code": code,
            "amount": int(receipt.amount),
            "channel": row.channel,
            "attempt_id": str(attempt_id),
            "receipt_id": str(receipt.id),
            "reason": reason[:200],
            "reversed_at": datetime.now(SHANGHAI).isoformat(timespec="seconds"),
            "bill_status": BillStatus.ISSUED.value,
        },
    }
    queued = (
        await conn.execute(
            _UNDO,
            {
                "receipt_id": receipt.id,
                "bill_id": bill_id,
                "actor": actor[:64],
                "detail": json.dumps(detail, ensure_ascii=False),
                "bill_text": str(bill_id),
                "webhook": WEBHOOK_TOPIC.value,
                "webhook_key": paid_event_key(receipt.id),
                "enote_key": f"{Topic.ENOTE_ISSUE.value}:{receipt.id}",
                "reversed_key": f"{REVERSED_EVENT}:{receipt.id}",
                "reversed": json.dumps(reversed_event, ensure_ascii=False),
                "red": TOPIC_RED_LETTER.value,
                "red_key": f"{TOPIC_RED_LETTER.value}:reversal:{receipt.id}",
                "red_payload": json.dumps({"receipt_id": str(receipt.id), "reason": reason}),
            },
        )
    ).scalars()
    await _mirror_entry(conn, receipt.id, reason)
    log.info(
        "payment taken back",
        bill_id=str(bill_id),
        attempt_id=str(attempt_id),
        followed_up=sorted(queued),
    )
    return UndoResult(Undone.UNDONE, bill_id, code, receipt.id)


async def _attempt_reversed(conn: AsyncConnection, attempt_id: uuid.UUID, status: str) -> None:
    ATTEMPT.check(status, AttemptStatus.REVERSED)
    await conn.execute(
        text(
            "UPDATE payment_attempts SET status = :to, updated_at = now()"
            " WHERE id = :id AND status = :from"
        ),
        {"id": attempt_id, "from": status, "to": AttemptStatus.REVERSED.value},
    )


async def _mirror_entry(conn: AsyncConnection, receipt_id: uuid.UUID, reason: str) -> None:
    """The receipt's ledger entry, reversed by its mirror image (entries are never changed)."""
    rows = (await conn.execute(_ENTRY, {"ref": str(receipt_id)})).all()
    if not rows:
        log.error("reversed receipt has no ledger entry", receipt_id=str(receipt_id))
        return
    entry_id, business_date = rows[0].id, rows[0].business_date
    await ledger.post(
        conn,
        kind="reversal",
        ref=str(entry_id),
        lines=[(r.code, -int(r.amount)) for r in rows],
        business_date=business_date,
        memo=f"reverses receipt/{receipt_id}: {reason}"[:200],
        reverses_id=entry_id,
    )
