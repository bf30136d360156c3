"""Request nonces: accepted once within their window."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base


class AuthNonce(Base):
    """Nonces seen while Redis was unavailable (the primary store is Redis `SET NX EX`)."""

    __tablename__ = "auth_nonces"
    __table_args__ = (Index(None, "expires_at"),)

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
