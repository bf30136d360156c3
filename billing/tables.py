"""Tables the billing service adds: payment-code counters and the nonce fallback store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import Base


class PaymentCodeCounter(Base):
    """One counter per region and year; serials are a keyed permutation of its values."""

    __tablename__ = "payment_code_counters"

    region_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_value: Mapped[int] = mapped_column(BigInteger)
    """The first counter value not yet handed out."""


class AuthNonce(Base):
    """Nonces seen while Redis was unavailable (the primary store is Redis `SET NX EX`)."""

    __tablename__ = "auth_nonces"
    __table_args__ = (Index(None, "expires_at"),)

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
