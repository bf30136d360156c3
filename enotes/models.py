"""Fiscal e-notes (财政电子票据) and their gap-free number counters.

Exactly-once is the database's job: one original note per receipt and at most one red
note cancelling it when the channel took the payment back (`uq_enotes_receipt_original`,
by kind), one red-letter note and at most one re-issue per refund
(`uq_enotes_refund_kind`), and (code, number) unique. Numbers come from one counter row per
note code, bumped inside the issuing transaction: a rollback hands the number back, so the
sequence has no gaps (a SEQUENCE would leave one on every rollback).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.crypto import decrypt
from kernel.db import Base

NOTE_KINDS = ("BLUE", "RED")
"""BLUE: an ordinary note; RED: a red-letter note (红字票据) cancelling a BLUE one."""
NOTE_STATUSES = ("VALID", "RED_LETTERED")

__all__ = [
    "ENote",
    "ENoteCounter",
]


class ENoteCounter(Base):
    __tablename__ = "enote_counters"
    __table_args__ = (CheckConstraint("last_number >= 0", name="last_number_non_negative"),)

    note_code: Mapped[str] = mapped_column(String(8), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


class ENote(Base):
    __tablename__ = "enotes"
    __table_args__ = (
        UniqueConstraint("note_code", "note_number"),
        CheckConstraint("kind IN ('BLUE', 'RED')", name="kind_known"),
        CheckConstraint("status IN ('VALID', 'RED_LETTERED')", name="status_known"),
        CheckConstraint("note_code ~ '^[0-9]{8}$'", name="note_code_8_digits"),
        CheckConstraint("note_number ~ '^[0-9]{10}$'", name="note_number_10_digits"),
        CheckConstraint("check_code ~ '^[0-9]{6}$'", name="check_code_6_digits"),
        CheckConstraint(
            # A red note without a refund cancels a payment the channel took back.
            "(kind = 'RED' AND total_amount < 0 AND original_id IS NOT NULL)"
            " OR (kind = 'BLUE' AND total_amount > 0"
            " AND (refund_id IS NULL) = (original_id IS NULL))",
            name="shape_by_kind",
        ),
        Index(
            "uq_enotes_receipt_original",
            "receipt_id",
            "kind",
            unique=True,
            postgresql_where=text("refund_id IS NULL"),
        ),
        Index(
            "uq_enotes_refund_kind",
            "refund_id",
            "kind",
            unique=True,
            postgresql_where=text("refund_id IS NOT NULL"),
        ),
        Index(None, "bill_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), server_default="VALID")
    note_code: Mapped[str] = mapped_column(String(8))
    note_number: Mapped[str] = mapped_column(String(10))
    check_code: Mapped[str] = mapped_column(String(6))
    agency_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agencies.id"))
    bill_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bills.id"))
    receipt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("receipts.id"))
    refund_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("refunds.id"))
    """Set on the red-letter note of a refund and on the re-issue of the remainder."""
    original_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("enotes.id"))
    """Red: the note it cancels. Re-issue: the note it replaces."""
    total_amount: Mapped[int] = mapped_column(BigInteger)
    """In fen; negative on a red-letter note."""
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_enc: Mapped[bytes] = mapped_column(LargeBinary)
    """Canonical JSON of the note's data elements — exactly the bytes the issuer signed —
    encrypted at rest, since it names the payer (`content`)."""
    signature_algorithm: Mapped[str] = mapped_column(String(16))
    issuer_signature: Mapped[bytes] = mapped_column(LargeBinary)
    issuer_key_id: Mapped[str] = mapped_column(String(64))
    issuer_cert_serial: Mapped[str] = mapped_column(String(64))
    issuer_signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    supervisor_signature: Mapped[bytes] = mapped_column(LargeBinary)
    """Over content || issuer signature: the finance department countersigns the issue."""
    supervisor_key_id: Mapped[str] = mapped_column(String(64))
    supervisor_cert_serial: Mapped[str] = mapped_column(String(64))
    supervisor_signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    @property
    def content(self) -> bytes:
        """The signed content in clear (DecryptError when the stored token was altered)."""
        return decrypt(self.content_enc, aad=content_aad(self.id))


def content_aad(note_id: uuid.UUID) -> bytes:
    """Binds a note's encrypted content to the note: copied onto another it does not open."""
    return f"enotes.content:{note_id}".encode()
