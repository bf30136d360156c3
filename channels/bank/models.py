"""The banks we take payments from, registered in the database (`paygate bank ...`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Integer,
    LargeBinary,
    String,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base

HMAC_SHA256 = "HMAC-SHA256"
SM2_SM3 = "SM2-SM3"
SIGN_METHODS = (HMAC_SHA256, SM2_SM3)


class Bank(Base):
    """One bank on the bank interface; its channel is `bank:<code>`.

    Keys by signing method — HMAC-SHA256: one shared secret (`secret_enc`). SM2-SM3: the
    bank's public key (`bank_public_key`, which verifies what it sends) and our own key pair
    for this bank (`our_key_enc`, which signs what we send; its public half is given to the
    bank). Secrets are AES-GCM encrypted (kernel.crypto) and bound to the bank's code. After
    a rotation the previous key still verifies the bank's messages until `previous_until`,
    so the bank can switch over without a lost message.
    """

    __tablename__ = "banks"
    __table_args__ = (
        CheckConstraint("code ~ '^[0-9]{1,11}$'", name="code_digits"),
        CheckConstraint(
            "sign_method IN ({})".format(", ".join(f"'{m}'" for m in SIGN_METHODS)),
            name="sign_method_known",
        ),
        CheckConstraint(
            f"(sign_method = '{HMAC_SHA256}' AND secret_enc IS NOT NULL)"
            f" OR (sign_method = '{SM2_SM3}' AND bank_public_key IS NOT NULL"
            " AND our_key_enc IS NOT NULL)",
            name="keys_present",
        ),
    )

    code: Mapped[str] = mapped_column(String(11), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    sign_method: Mapped[str] = mapped_column(String(16))
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    bank_public_key: Mapped[str | None] = mapped_column(String(130))
    """SM2: the bank's public key, 04‖x‖y in hex."""
    our_key_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    """SM2: our private key for this bank (its scalar), encrypted."""
    previous_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_public_key: Mapped[str | None] = mapped_column(String(130))
    previous_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(String(255))
    """Where we call the bank (query, close, refund, statements)."""
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    key_version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
