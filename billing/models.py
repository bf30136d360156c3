"""Agencies, API keys, the revenue-item catalogue, bills and their lines and history, and
the agencies' webhook events and delivery attempts.

Money is integer fen (BIGINT) everywhere. Public ids are UUIDs; personal ID numbers are
stored only encrypted (`*_enc`) plus a keyed hash (`*_hash`) for exact-match search.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kernel.db import Base

__all__ = [
    "BUDGET_LEVELS",
    "ITEM_CATEGORIES",
    "Agency",
    "AgencyItem",
    "ApiKey",
    "Bill",
    "BillEvent",
    "BillLine",
    "PaymentCodeCounter",
    "RevenueItem",
    "WebhookAttempt",
    "WebhookEvent",
]

ITEM_CATEGORIES = ("FINE", "EXAM_FEE", "TUITION", "OTHER")
BUDGET_LEVELS = (1, 2, 3, 4, 5, 6)
"""Treasury budget levels: 1 central, 2 provincial, 3 city, 4 county, 5 township, 6 local."""


class Agency(Base):
    """A collecting agency (执收单位)."""

    __tablename__ = "agencies"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    credit_code: Mapped[str] = mapped_column(String(18), unique=True)
    """Unified social credit code (统一社会信用代码), check character validated."""
    name: Mapped[str] = mapped_column(String(200))
    region_code: Mapped[str] = mapped_column(String(6))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    items: Mapped[list[AgencyItem]] = relationship(cascade="all, delete-orphan", lazy="raise")


class AgencyItem(Base):
    """Which revenue items an agency may bill."""

    __tablename__ = "agency_items"

    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"), primary_key=True)
    item_code: Mapped[str] = mapped_column(ForeignKey("revenue_items.code"), primary_key=True)


class ApiKey(Base):
    """An agency's API credential; the secret is stored encrypted, shown once at creation."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"), index=True)
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RevenueItem(Base):
    """A revenue item (收费/罚没项目) mapped to a budget subject and a level split."""

    __tablename__ = "revenue_items"
    __table_args__ = (
        CheckConstraint(
            "category IN ('FINE', 'EXAM_FEE', 'TUITION', 'OTHER')", name="category_known"
        ),
        CheckConstraint("budget_subject ~ '^[0-9]{12}$'", name="budget_subject_12_digits"),
        CheckConstraint(
            "split_l1_bp + split_l2_bp + split_l3_bp + split_l4_bp + split_l5_bp + split_l6_bp"
            " = 10000",
            name="split_sums_to_100_percent",
        ),
        CheckConstraint(
            "split_l1_bp >= 0 AND split_l2_bp >= 0 AND split_l3_bp >= 0 AND split_l4_bp >= 0"
            " AND split_l5_bp >= 0 AND split_l6_bp >= 0",
            name="split_non_negative",
        ),
        CheckConstraint(
            "(fixed_amount IS NOT NULL AND fixed_amount > 0)"
            " OR (min_amount IS NOT NULL AND max_amount IS NOT NULL"
            " AND min_amount > 0 AND min_amount <= max_amount)",
            name="amount_rule",
        ),
        CheckConstraint("late_fee_rule IN ('NONE', 'FINE_DAILY_3PCT')", name="late_fee_known"),
    )

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(16), server_default="次")
    budget_subject: Mapped[str] = mapped_column(String(12))
    # Level split in basis points (1/100 of a percent); the six always sum to 10000.
    split_l1_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    split_l2_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    split_l3_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    split_l4_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    split_l5_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    split_l6_bp: Mapped[int] = mapped_column(Integer, server_default="0")
    fixed_amount: Mapped[int | None] = mapped_column(BigInteger)
    min_amount: Mapped[int | None] = mapped_column(BigInteger)
    max_amount: Mapped[int | None] = mapped_column(BigInteger)
    late_fee_rule: Mapped[str] = mapped_column(String(24), server_default="NONE")
    refundable: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    active_from: Mapped[date] = mapped_column(Date)
    active_to: Mapped[date | None] = mapped_column(Date)

    def split(self) -> dict[int, int]:
        """Level → basis points, only the levels that receive a share."""
        bps = (
            self.split_l1_bp,
            self.split_l2_bp,
            self.split_l3_bp,
            self.split_l4_bp,
            self.split_l5_bp,
            self.split_l6_bp,
        )
        return {level: bp for level, bp in zip(BUDGET_LEVELS, bps, strict=True) if bp}


class Bill(Base):
    """A payment notice (缴款通知书) issued by an agency to one payer."""

    __tablename__ = "bills"
    __table_args__ = (
        UniqueConstraint("agency_id", "agency_bill_no"),
        CheckConstraint("principal_amount > 0", name="principal_positive"),
        CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= paid_amount", name="refund_within_paid"
        ),
        CheckConstraint(
            "status IN ('ISSUED', 'PAID', 'SETTLED', 'CANCELLED', 'EXPIRED',"
            " 'PARTIALLY_REFUNDED', 'REFUNDED')",
            name="status_known",
        ),
        CheckConstraint("payer_type IN ('PERSON', 'ORG')", name="payer_type_known"),
        Index(None, "agency_id", "status", "issued_at"),
        Index(None, "payer_id_hash"),
        Index(None, "expires_at", postgresql_where=text("status = 'ISSUED'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"))
    agency_bill_no: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    """SHA-256 of the canonical create request: same number + other body = 409."""
    payment_code: Mapped[str] = mapped_column(String(20), unique=True)
    category: Mapped[str] = mapped_column(String(16))
    late_fee_rule: Mapped[str] = mapped_column(String(24), server_default="NONE")
    """The items' late-fee rule, fixed at issuance (billing.late_fee)."""
    status: Mapped[str] = mapped_column(String(24), server_default="ISSUED")
    payer_type: Mapped[str] = mapped_column(String(8))
    payer_name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    """The payer's name, encrypted like the ID number (billing.bills.payer_name_of)."""
    payer_id_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    payer_id_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    payer_phone_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    principal_amount: Mapped[int] = mapped_column(BigInteger)
    """Σ line amounts, in fen. The amount due on a day adds the late fee (billing.late_fee)."""
    paid_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refunded_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    due_date: Mapped[date] = mapped_column(Date)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    remark: Mapped[str | None] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    lines: Mapped[list[BillLine]] = relationship(
        cascade="all, delete-orphan", order_by="BillLine.line_no", lazy="raise"
    )


class BillLine(Base):
    __tablename__ = "bill_lines"
    __table_args__ = (
        UniqueConstraint("bill_id", "line_no"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("unit_amount > 0", name="unit_amount_positive"),
        CheckConstraint("amount = quantity * unit_amount", name="amount_is_product"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    item_code: Mapped[str] = mapped_column(ForeignKey("revenue_items.code"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)


class BillEvent(Base):
    """Every status transition of a bill: who, when, from, to, why."""

    __tablename__ = "bill_events"
    __table_args__ = (Index(None, "bill_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(24))
    to_status: Mapped[str] = mapped_column(String(24))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, object]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class PaymentCodeCounter(Base):
    """One counter per region and year; serials are a keyed permutation of its values."""

    __tablename__ = "payment_code_counters"

    region_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)
    """The first counter value not yet handed out."""


# ------------------------------------------------------------------ agency webhooks


class WebhookEvent(Base):
    """One event for one agency; its id is the public event id (Paygate-Event-Id)."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint("status IN ('PENDING', 'DELIVERED', 'FAILED')", name="status_known"),
        CheckConstraint(
            "event IN ('bill.paid', 'bill.refunded', 'bill.expired', 'bill.cancelled',"
            " 'enote.issued', 'bill.payment_reversed')",
            name="event_known",
        ),
        CheckConstraint(
            "(status = 'PENDING') = (next_attempt_at IS NOT NULL)", name="pending_has_schedule"
        ),
        Index(None, "next_attempt_at", postgresql_where=text("status = 'PENDING'")),
        Index(None, "agency_id", "created_at", "id"),
        Index(None, "bill_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"))
    event: Mapped[str] = mapped_column(String(32))
    bill_id: Mapped[uuid.UUID | None]
    """Not a foreign key: the event log outlives whatever it describes."""
    source_key: Mapped[str] = mapped_column(String(128), unique=True)
    """The outbox dedupe key this event came from: one key, one event."""
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The `data` object sent to the receiver."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the change happened (the outbox message's commit-time clock)."""
    status: Mapped[str] = mapped_column(String(16), server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    """Attempts claimed so far (also the last attempt_no); never reset."""
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    """Consecutive failures since the event was (re)queued: indexes RETRY_SCHEDULE."""
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Set while a worker is sending; a crashed worker's lease simply expires."""
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One HTTP try (or a try that could not be made) for an event."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("event_id", "attempt_no"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    url: Mapped[str | None] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
