"""MIS-POS card terminals at agency counters: the registry, every message they sent us,
and the batches they settled."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base

__all__ = [
    "PosBatch",
    "PosTerminal",
    "PosTransaction",
]


class PosTerminal(Base):
    """A card terminal: the acquirer's merchant id (15) and terminal id (8), where it stands,
    the agency whose bills it takes, and the key that signs its messages (stored encrypted)."""

    __tablename__ = "pos_terminals"
    __table_args__ = (
        UniqueConstraint("merchant_id", "terminal_id"),
        CheckConstraint("merchant_id ~ '^[0-9]{15}$'", name="merchant_id_shape"),
        CheckConstraint("terminal_id ~ '^[0-9A-Z]{8}$'", name="terminal_id_shape"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    merchant_id: Mapped[str] = mapped_column(String(15))
    terminal_id: Mapped[str] = mapped_column(String(8))
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"))
    counter: Mapped[str] = mapped_column(String(64))
    """The counter (窗口) or hall the terminal stands at."""
    operator: Mapped[str | None] = mapped_column(String(64))
    """The clerk responsible for it."""
    key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class PosTransaction(Base):
    """One sale, void or refund a terminal sent, keyed as the terminal keys it (batch and
    trace number). A reversal changes the status of the sale it names; a reversal that
    arrives before its sale leaves a REVERSED row (a tombstone) that refuses the sale."""

    __tablename__ = "pos_transactions"
    __table_args__ = (
        UniqueConstraint("terminal_ref", "batch_no", "trace_no"),
        CheckConstraint("kind IN ('SALE', 'VOID', 'REFUND')", name="kind_known"),
        CheckConstraint("status IN ('ACCEPTED', 'REVERSED', 'VOIDED')", name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    terminal_ref: Mapped[uuid.UUID] = mapped_column(ForeignKey("pos_terminals.id"))
    batch_no: Mapped[str] = mapped_column(String(6))
    trace_no: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    payment_code: Mapped[str | None] = mapped_column(String(32))
    bill_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("bills.id"))
    attempt_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("payment_attempts.id"))
    """A sale's payment attempt (none for a tombstone)."""
    original_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("pos_transactions.id"))
    """A void's or refund's sale."""
    refund_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("refunds.id"))
    rrn: Mapped[str | None] = mapped_column(String(12))
    card: Mapped[str | None] = mapped_column(String(19))
    """Masked: first six and last four digits only."""
    card_type: Mapped[str | None] = mapped_column(String(8))
    acquirer: Mapped[str | None] = mapped_column(String(11))
    issuer: Mapped[str | None] = mapped_column(String(11))
    operator: Mapped[str | None] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    settle_date: Mapped[str | None] = mapped_column(String(4))
    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the message's business fields: an identical repeat answers as the first."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class PosBatch(Base):
    """A terminal's settled batch (批结算): its totals, ours, and what differed."""

    __tablename__ = "pos_batches"
    __table_args__ = (CheckConstraint("status IN ('BALANCED', 'MISMATCHED')", name="status_known"),)

    terminal_ref: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("pos_terminals.id"), primary_key=True
    )
    batch_no: Mapped[str] = mapped_column(String(6), primary_key=True)
    status: Mapped[str] = mapped_column(String(12))
    terminal_totals: Mapped[dict[str, Any]] = mapped_column(JSONB)
    our_totals: Mapped[dict[str, Any]] = mapped_column(JSONB)
    differences: Mapped[list[Any]] = mapped_column(JSONB)
    """The transactions only one side has, or has with another amount."""
    digest: Mapped[str] = mapped_column(String(64))
    settled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
