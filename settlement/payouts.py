"""Paying out treasury refunds (退库): from the collection account to the payer's bank account.

A refund requested after settlement (route TREASURY) carries the payee's account (captured
at request time, stored encrypted). Its life:

1. REQUESTED → PROCESSING when the next `settle` puts it as negative REFUND lines into the
   deposit batches: the treasury gives the money back to the collection account.
2. Due for payout once every batch carrying it is exported (`payouts_due`). Finance
   downloads the payout instruction file (`payout_csv`: one bank transfer per refund) and
   hands it to the agency bank.
3. When the bank confirms a transfer, finance records it (`confirm_payout`, finance API
   `POST /v1/settlement/refunds/{id}/payout` or `paygate payout-confirm`, audited): the
   ledger pays refunds payable out of the collection account, and only now is the refund
   SUCCEEDED — the bill's refunded amount moves, the e-note is red-lettered and the agency
   told (`bill.refunded`).

Instruction file: UTF-8 CSV, LF line ends, header row, amounts in yuan with two decimals::

    refund_id,amount,payee_name,payee_account,payee_bank,payment_code,reason
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

import ledger
from billing.models import Bill
from channels.money import fen_to_yuan
from kernel import audit
from kernel.clock import shanghai_today
from kernel.errors import Conflict, InvalidInput, NotFound
from payments import refunds
from payments.models import Refund
from payments.refunds import Payee
from payments.states import RefundStatus
from settlement.models import BatchedRefund, DepositBatch
from settlement.states import DepositBatchStatus

__all__ = ["PAYOUT_COLUMNS", "PayoutDue", "confirm_payout", "payout_csv", "payouts_due"]

log = structlog.get_logger(__name__)

PAYOUT_COLUMNS = (
    "refund_id",
    "amount",
    "payee_name",
    "payee_account",
    "payee_bank",
    "payment_code",
    "reason",
)


@dataclass(frozen=True, slots=True)
class PayoutDue:
    refund_id: uuid.UUID
    amount: int
    payee: Payee
    payment_code: str
    reason: str


# Batched, and none of its batches still waiting for export.
_ALL_EXPORTED = exists().where(BatchedRefund.refund_id == Refund.id) & ~exists().where(
    BatchedRefund.refund_id == Refund.id,
    DepositBatch.id == BatchedRefund.batch_id,
    DepositBatch.status != DepositBatchStatus.EXPORTED,
)


async def payouts_due(session: AsyncSession) -> list[PayoutDue]:
    """Treasury refunds whose money is back in the collection account, not yet paid out."""
    rows = await session.execute(
        select(Refund, Bill.payment_code)
        .join(Bill, Bill.id == Refund.bill_id)
        .where(
            Refund.route == "TREASURY",
            Refund.status == RefundStatus.PROCESSING,
            _ALL_EXPORTED,
        )
        .order_by(Refund.created_at, Refund.id)
    )
    due: list[PayoutDue] = []
    for refund, payment_code in rows:
        if refund.payee_enc is None:  # requested before payees were captured
            log.warning("treasury refund without a payee account", refund_id=str(refund.id))
            continue
        due.append(
            PayoutDue(
                refund.id,
                refund.amount,
                Payee.unseal(refund.payee_enc, refund.id),
                payment_code,
                refund.reason,
            )
        )
    return due


def payout_csv(due: list[PayoutDue]) -> bytes:
    """The payout instruction for the agency bank (layout in the module docstring)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(PAYOUT_COLUMNS)
    for d in due:
        w.writerow(
            [
                d.refund_id,
                fen_to_yuan(d.amount),
                d.payee.name,
                d.payee.account,
                d.payee.bank,
                d.payment_code,
                d.reason,
            ]
        )
    return out.getvalue().encode()


async def confirm_payout(
    session: AsyncSession, refund_id: uuid.UUID, *, reference: str, actor: str
) -> tuple[Refund, str]:
    """The bank confirmed the transfer: complete the refund (once), in the caller's
    transaction. Returns the refund and its bill's payment code (for the caller's cache).

    Repeating a confirmation with the same reference answers the completed refund; another
    reference for a paid-out refund, or a refund not yet due, is a Conflict.
    """
    if not reference.strip() or len(reference) > 64 or not reference.isprintable():
        raise InvalidInput("reference must be 1-64 printable characters", code="reference_invalid")
    refund = await session.scalar(
        select(Refund)
        .where(Refund.id == refund_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if refund is None or refund.route != "TREASURY":
        raise NotFound(f"no treasury refund {refund_id}", code="refund_not_found")
    code = await session.scalar(select(Bill.payment_code).where(Bill.id == refund.bill_id))
    assert code is not None
    if refund.status == RefundStatus.SUCCEEDED:
        if refund.payout_ref == reference:
            return refund, code
        raise Conflict(f"refund {refund_id} was paid out already", code="payout_confirmed")
    due = await session.scalar(
        select(Refund.id).where(
            Refund.id == refund_id, Refund.status == RefundStatus.PROCESSING, _ALL_EXPORTED
        )
    )
    if due is None:
        raise Conflict(
            f"refund {refund_id} is not due for payout (its deposit batches are not all exported)",
            code="payout_not_due",
        )
    now = datetime.now(UTC)
    await ledger.post_payout(
        session, refund_id=refund.id, amount=refund.amount, business_date=shanghai_today(now)
    )
    refund.payout_ref = reference
    refund.paid_out_by = actor
    await refunds.complete_refund(
        session, refund.id, succeeded=True, channel_refund_no=reference, when=now
    )
    audit.record(
        session,
        actor_type="finance",
        actor_id=actor,
        action="refund.payout_confirmed",
        object_type="refund",
        object_id=str(refund.id),
        detail={"amount": refund.amount, "reference": reference},
    )
    await session.flush()
    log.info("treasury refund paid out", refund_id=str(refund.id), amount=refund.amount)
    return refund, code
