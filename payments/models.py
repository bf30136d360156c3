"""Payment attempts, receipts and refunds — the money side of a bill.

Exactly-once is enforced by the database, not by hope: one receipt per attempt
(`uq_receipts_attempt_id`), one PAYMENT receipt per bill (`uq_receipts_one_payment_per_bill`),
one receipt per channel transaction; further confirmations of an already paid bill are
recorded as DUPLICATE receipts and refunded.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column

from channels.base import PayMode
from kernel.db import Base

__all__ = [
    "DayCheck",
    "PaymentAttempt",
    "Receipt",
    "Refund",
]


class PaymentAttempt(Base):
    """One try at paying a bill through one channel; `id` is the channel's out_trade_no."""

    __tablename__ = "payment_attempts"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "status IN ('CREATED', 'PENDING', 'SUCCEEDED', 'FAILED', 'CLOSED', 'UNKNOWN',"
            " 'REVERSED')",
            name="status_known",
        ),
        Index(None, "bill_id"),
        Index(
            "ix_payment_attempts_open",
            "next_check_at",
            postgresql_where=text("status IN ('CREATED', 'PENDING', 'UNKNOWN')"),
        ),
        Index(
            "uq_payment_attempts_channel_trade_no",
            "channel",
            "channel_trade_no",
            unique=True,
            postgresql_where=text("channel_trade_no IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id"))
    channel: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default="CREATED")
    amount: Mapped[int] = mapped_column(BigInteger)
    """The amount due when the attempt was created (principal + late fee), in fen."""
    channel_trade_no: Mapped[str | None] = mapped_column(String(64))
    client_payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )
    """What the payer's client needs: QR content, a redirect URL..."""
    failure_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_check_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


def _channel_pay_mode(context: DefaultExecutionContext) -> str:
    # The mode of a receipt written without one: its channel's (see PayMode.for_channel).
    params = context.get_current_parameters()  # type: ignore[no-untyped-call]
    return PayMode.for_channel(str(params["channel"])).value


PAY_MODE_CHECK = "pay_mode IN ({})".format(", ".join(f"'{m.value}'" for m in PayMode))


class Receipt(Base):
    """Money a channel confirmed for a bill: the payment, or a duplicate to be refunded.

    REVERSED: a payment the channel took back before settlement (a card terminal's
    reversal or void, payments.reversal); kept as the record, no longer money of the bill."""

    __tablename__ = "receipts"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("kind IN ('PAYMENT', 'DUPLICATE', 'REVERSED')", name="kind_known"),
        CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount", name="refund_within_amount"
        ),
        CheckConstraint("status IN ('CONFIRMED', 'SETTLED')", name="status_known"),
        CheckConstraint(PAY_MODE_CHECK, name="pay_mode_known"),
        Index(
            "uq_receipts_one_payment_per_bill",
            "bill_id",
            unique=True,
            postgresql_where=text("kind = 'PAYMENT'"),
        ),
        Index(
            "uq_receipts_channel_trade_no",
            "channel",
            "channel_trade_no",
            unique=True,
            postgresql_where=text("channel_trade_no IS NOT NULL"),
        ),
        Index(None, "business_date", "channel"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id"))
    attempt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payment_attempts.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    channel_trade_no: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    pay_mode: Mapped[str] = mapped_column(String(16), default=_channel_pay_mode)
    """How the payer paid (channels.base.PayMode): the bank's app, counter, e-CNY..."""
    status: Mapped[str] = mapped_column(String(16), server_default="CONFIRMED")
    amount: Mapped[int] = mapped_column(BigInteger)
    late_fee_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refunded_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    paid_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    business_date: Mapped[date] = mapped_column(Date)
    """Asia/Shanghai business day after the configurable cutoff (日切)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Refund(Base):
    """A refund (退付) of part or all of a receipt; `id` is the channel idempotency key."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("route IN ('CHANNEL', 'TREASURY')", name="route_known"),
        CheckConstraint(
            "status IN ('REQUESTED', 'PROCESSING', 'SUCCEEDED', 'FAILED', 'UNKNOWN')",
            name="status_known",
        ),
        Index(None, "receipt_id"),
        Index(
            "ix_refunds_open",
            "updated_at",
            postgresql_where=text("status IN ('REQUESTED', 'PROCESSING', 'UNKNOWN')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    receipt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("receipts.id"))
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    route: Mapped[str] = mapped_column(String(16))
    """CHANNEL before settlement (back through the channel); TREASURY (退库) after."""
    status: Mapped[str] = mapped_column(String(16), server_default="REQUESTED")
    reason: Mapped[str] = mapped_column(Text)
    requested_by_type: Mapped[str] = mapped_column(String(16))
    requested_by_id: Mapped[str] = mapped_column(String(64))
    channel_refund_no: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    payee_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    """A treasury refund's payee account (name, account number, bank), encrypted: the
    money goes back by bank transfer (see payments.refunds.Payee)."""
    payout_ref: Mapped[str | None] = mapped_column(String(64))
    """The bank's reference of the confirmed payout of a treasury refund."""
    paid_out_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DayCheck(Base):
    """A channel's own day-end account check (日终对账) as it sent it, and what we found.

    One per channel and business day: a second one is refused (the interface's "statement
    sent twice"); `mismatches` lists each line that differs from the confirmations we
    recorded that day (amount differs, ours only, theirs only) with its result."""

    __tablename__ = "day_checks"
    __table_args__ = (UniqueConstraint("channel", "business_date"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    business_date: Mapped[date] = mapped_column(Date)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary)
    line_count: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)
    """Fen, the channel's sum of its lines."""
    mismatches: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
