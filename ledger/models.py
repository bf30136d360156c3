"""The ledger's tables: accounts, entries, lines and the pending marks.

The ledger is append-only double entry: `journal_lines.amount` is signed fen (debit > 0,
credit < 0), so "Σ debits = Σ credits" is "Σ amount = 0" per entry. A deferred constraint
trigger (migration 0007) refuses to commit an unbalanced entry, and UPDATE/DELETE on
entries and lines is refused outright: corrections are reversing entries.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base


class LedgerAccount(Base):
    """One account; `balance` + its pending lines = Σ its lines (debit positive).

    Postings do not touch this row: every confirmation would otherwise queue on the same
    few account rows (clearing, revenue) until its commit. The worker folds pending lines
    into `balance` set-based (ledger.rollup); balances() and verify() add what is pending.
    """

    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    """e.g. clearing:alipay, revenue_pending, suspense, treasury:330100-2."""
    kind: Mapped[str] = mapped_column(String(24))
    balance: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class JournalEntry(Base):
    __tablename__ = "journal_entries"
    __table_args__ = (
        UniqueConstraint("kind", "ref"),
        Index(None, "business_date"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    ref: Mapped[str] = mapped_column(String(128))
    """What the entry posts (receipt id, refund id, settlement id...); (kind, ref) is unique,
    so posting the same business event twice is impossible."""
    business_date: Mapped[date | None] = mapped_column(Date)
    memo: Mapped[str] = mapped_column(Text, server_default="")
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    posted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerPending(Base):
    """Journal lines not yet folded into their account's stored balance."""

    __tablename__ = "ledger_pending"

    line_id: Mapped[int] = mapped_column(ForeignKey("journal_lines.id"), primary_key=True)


class JournalLine(Base):
    __tablename__ = "journal_lines"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index(None, "entry_id"),
        Index(None, "account_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    """Fen: debit positive, credit negative."""
