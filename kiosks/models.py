"""Self-service kiosks (自助终端): the device registry, what each device told us, its gaps.

A kiosk numbers every confirmation it sends with a strictly increasing sequence number of
its own. `kiosk_confirmations` keeps each (device, sequence) once — the first record of a
number wins; a later one with other content is a conflict — and `kiosk_gaps` the numbers
below the highest seen that have not arrived yet (closed, not deleted, when they do).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kernel.db import Base

__all__ = [
    "SIGN_ALGORITHMS",
    "KioskConfirmation",
    "KioskDevice",
    "KioskGap",
]

SIGN_ALGORITHMS = ("HMAC", "SM2")


class KioskDevice(Base):
    """One kiosk, registered by finance or the service hall that runs it."""

    __tablename__ = "kiosk_devices"
    __table_args__ = (
        CheckConstraint("sign_alg IN ('HMAC', 'SM2')", name="sign_alg_known"),
        CheckConstraint(
            "(sign_alg = 'HMAC' AND secret_enc IS NOT NULL)"
            " OR (sign_alg = 'SM2' AND public_key IS NOT NULL)",
            name="key_present",
        ),
        CheckConstraint("agency_id IS NOT NULL OR owner_hall IS NOT NULL", name="owner_present"),
        CheckConstraint("heartbeat_window_s > 0", name="window_positive"),
        CheckConstraint("last_seq >= 0", name="last_seq_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The device id the kiosk sends in every message (letters, digits, '-')."""
    hall: Mapped[str] = mapped_column(String(128))
    """Where it stands: the hall's name (e.g. 市民中心一楼大厅)."""
    location: Mapped[str] = mapped_column(String(256), server_default="")
    region_code: Mapped[str] = mapped_column(String(6))
    agency_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agencies.id"))
    """The collecting agency that owns the device, or None when a service hall does."""
    owner_hall: Mapped[str | None] = mapped_column(String(128))
    acquirer_merchant_id: Mapped[str] = mapped_column(String(15))
    acquirer_terminal_id: Mapped[str] = mapped_column(String(8))
    sign_alg: Mapped[str] = mapped_column(String(8))
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    """HMAC devices: the shared secret, encrypted at rest (kernel.crypto, bound to the id)."""
    public_key: Mapped[str | None] = mapped_column(Text)
    """SM2 devices: the device's public key (PEM); the private key never leaves it."""
    key_version: Mapped[int] = mapped_column(Integer, server_default="1")
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    heartbeat_window_s: Mapped[int] = mapped_column(Integer, server_default="300")
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    """The highest sequence number the device has sent or announced."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class KioskConfirmation(Base):
    """A confirmation as the device sent it, once per sequence number."""

    __tablename__ = "kiosk_confirmations"
    __table_args__ = (
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint("amount > 0", name="amount_positive"),
        Index(None, "acquirer_ref"),
    )

    device_id: Mapped[str] = mapped_column(ForeignKey("kiosk_devices.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[uuid.UUID | None] = mapped_column()
    """The attempt our query opened (None when the kiosk paid by payment code alone)."""
    payment_code: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    paid_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquirer_ref: Mapped[str] = mapped_column(String(64))
    """The acquirer's reference of the charge; it is the receipt's channel trade number."""
    method: Mapped[str] = mapped_column(String(8))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    """SHA-256 of the confirmation's facts: a repeat must match it, else it conflicts."""
    uploaded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    """Arrived in a store-and-forward upload rather than online."""
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class KioskGap(Base):
    """A sequence number below the device's highest that has not arrived (yet)."""

    __tablename__ = "kiosk_gaps"
    __table_args__ = (
        Index("ix_kiosk_gaps_open", "device_id", "seq", postgresql_where=text("closed_at IS NULL")),
    )

    device_id: Mapped[str] = mapped_column(ForeignKey("kiosk_devices.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    detected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
