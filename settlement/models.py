"""Tables of the settlement side: statements, reconciliation, treasury batches."""

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
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base

__all__ = [
    "BatchedRefund",
    "DepositBatch",
    "DepositLine",
    "Discrepancy",
    "ReconRun",
    "SettledReceipt",
    "Settlement",
    "StatementFile",
    "StatementRow",
    "Treasury",
]

# ------------------------------------------------------------------ statements


class StatementFile(Base):
    """One statement received for a channel and business day; a re-sent copy is refused."""

    __tablename__ = "statement_files"
    __table_args__ = (
        UniqueConstraint("channel", "business_date", "content_hash"),
        CheckConstraint("status IN ('CURRENT', 'SUPERSEDED')", name="status_known"),
        Index(
            "uq_statement_files_current",
            "channel",
            "business_date",
            unique=True,
            postgresql_where=text("status = 'CURRENT'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    business_date: Mapped[date] = mapped_column(Date)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), server_default="CURRENT")
    line_count: Mapped[int] = mapped_column(Integer, server_default="0")
    payment_total: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refund_total: Mapped[int] = mapped_column(BigInteger, server_default="0")
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class StatementRow(Base):
    """Staging for a statement's lines, loaded with COPY; kept for the file's lifetime.

    Deliberately light for COPY speed: the primary key is (file, line) and there is no
    foreign key (a per-row RI trigger would double the load time); lines are only ever
    written by `reconcile.ingest` for a file it has just created.
    """

    __tablename__ = "statement_lines"
    __table_args__ = (CheckConstraint("kind IN ('PAYMENT', 'REFUND')", name="kind_known"),)

    file_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_trade_no: Mapped[str] = mapped_column(String(64))
    attempt_id: Mapped[str] = mapped_column(String(64))
    """As the channel echoes our out_trade_no; text, since a channel may send anything."""
    kind: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    fee: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    refund_id: Mapped[str | None] = mapped_column(String(64))
    payment_code: Mapped[str | None] = mapped_column(String(20))
    """The bill's payment code when the channel lists it (a bank does)."""


# ------------------------------------------------------------------ reconciliation

DISCREPANCY_CLASSES = (
    "PLATFORM_ONLY",
    "CHANNEL_ONLY",
    "AMOUNT_MISMATCH",
    "STATUS_MISMATCH",
    "DUPLICATE_PAYMENT",
    "FEE_MISMATCH",
    "REVERSED_SETTLED",
)
"""What `settlement.reconcile` can find (its docstring says what each means); the table's
check constraint is made from this list."""


class ReconRun(Base):
    __tablename__ = "recon_runs"
    __table_args__ = (
        CheckConstraint("status IN ('RUNNING', 'DONE', 'FAILED')", name="status_known"),
        Index(None, "channel", "business_date"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    business_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[int | None] = mapped_column(ForeignKey("statement_files.id"))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Discrepancy(Base):
    """A difference between our records and a channel's statement, with a life of its own.

    HELD: platform-only inside the late-file window; OPEN: waits for a person (or the
    auto-heal); RESOLVED (with action and who) or ACCEPTED are final.
    """

    __tablename__ = "discrepancies"
    __table_args__ = (
        UniqueConstraint("channel", "business_date", "klass", "match_key"),
        CheckConstraint(
            "klass IN (" + ", ".join(f"'{k}'" for k in DISCREPANCY_CLASSES) + ")",
            name="klass_known",
        ),
        CheckConstraint("status IN ('HELD', 'OPEN', 'RESOLVED', 'ACCEPTED')", name="status_known"),
        Index(None, "business_date", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    business_date: Mapped[date] = mapped_column(Date)
    klass: Mapped[str] = mapped_column(String(24))
    match_key: Mapped[str] = mapped_column(String(64))
    """Our attempt id as the channel echoes it (or the refund id for refund rows)."""
    status: Mapped[str] = mapped_column(String(16))
    attempt_id: Mapped[uuid.UUID | None] = mapped_column()
    receipt_id: Mapped[uuid.UUID | None] = mapped_column()
    channel_trade_no: Mapped[str | None] = mapped_column(String(64))
    payment_code: Mapped[str | None] = mapped_column(String(20))
    """Channel-only money naming a bill: what the day-end file heals it by."""
    our_amount: Mapped[int | None] = mapped_column(BigInteger)
    channel_amount: Mapped[int | None] = mapped_column(BigInteger)
    channel_fee: Mapped[int | None] = mapped_column(BigInteger)
    expected_fee: Mapped[int | None] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hold_until: Mapped[date | None] = mapped_column(Date)
    action: Mapped[str | None] = mapped_column(String(32))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# ------------------------------------------------------------------ treasury


class Treasury(Base):
    """Which treasury (国库) takes a region's revenue at a budget level; seeded per region."""

    __tablename__ = "treasuries"
    __table_args__ = (CheckConstraint("budget_level BETWEEN 1 AND 6", name="level_known"),)

    region_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    budget_level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    treasury_code: Mapped[str] = mapped_column(String(16), unique=True)
    finance_org_code: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))


class Settlement(Base):
    """One settlement of a business day: which receipts it swept, which batches it made."""

    __tablename__ = "settlements"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    business_date: Mapped[date] = mapped_column(Date, index=True)
    """A day may settle in several runs: a later run sweeps what became ready since."""
    receipt_count: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SettledReceipt(Base):
    """Receipt → the settlement that swept it; the primary key settles a receipt once.

    No foreign keys on purpose: a settlement writes up to millions of these in the statement
    that moves the receipts, and per-row RI triggers would cost more than the rest of it.
    """

    __tablename__ = "settled_receipts"

    receipt_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    settlement_id: Mapped[uuid.UUID] = mapped_column(index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    """What was swept: the receipt amount less what the channel had refunded."""


class DepositBatch(Base):
    """A treasury deposit batch (like PBOC 5408): header of one treasury's detail lines."""

    __tablename__ = "deposit_batches"
    __table_args__ = (
        UniqueConstraint("settlement_id", "treasury_code"),
        CheckConstraint("status IN ('DRAFT', 'EXPORTED')", name="status_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    settlement_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("settlements.id"))
    business_date: Mapped[date] = mapped_column(Date)
    treasury_code: Mapped[str] = mapped_column(String(16))
    finance_org_code: Mapped[str] = mapped_column(String(16))
    region_code: Mapped[str] = mapped_column(String(6))
    budget_level: Mapped[int] = mapped_column(SmallInteger)
    fund_type: Mapped[str] = mapped_column(String(4), server_default="1")
    """1 = budget revenue (预算内); the fiscal special account's batches would be 2."""
    line_count: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), server_default="DRAFT")
    content_hash: Mapped[str | None] = mapped_column(String(64))
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exported_by: Mapped[str | None] = mapped_column(String(64))


class DepositLine(Base):
    __tablename__ = "deposit_lines"
    __table_args__ = (
        UniqueConstraint("batch_id", "line_no"),
        CheckConstraint("kind IN ('DEPOSIT', 'REFUND')", name="kind_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deposit_batches.id"))
    line_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))
    """DEPOSIT (缴库) or REFUND (退库, negative amount)."""
    budget_subject: Mapped[str] = mapped_column(String(12))
    budget_level: Mapped[int] = mapped_column(SmallInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    item_count: Mapped[int] = mapped_column(Integer)
    payment_ref: Mapped[str] = mapped_column(String(128))
    """Reference to the payment codes: settlement id + subject (GET …/batches/{id}/codes)."""


class BatchedRefund(Base):
    """A treasury refund (退库) → each batch that carries part of it (one per budget level it
    spans); it is done when all of them are exported."""

    __tablename__ = "batched_refunds"

    refund_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("refunds.id"), primary_key=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deposit_batches.id"), primary_key=True, index=True
    )
