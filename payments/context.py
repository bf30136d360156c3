"""What the payment services need from the process, without depending on the web layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.late_fee import DayCount
from channels.base import ChannelRegistry
from kernel.kv import KV

__all__ = [
    "PaymentContext",
    "Sent",
]


@dataclass(frozen=True, slots=True)
class PaymentContext:
    sessions: async_sessionmaker[AsyncSession]
    redis: KV
    channels: ChannelRegistry
    public_url: str
    """Where channels reach us (notify URLs)."""
    attempt_ttl_s: int = 30 * 60
    first_check_s: int = 3 * 60
    cutoff: time = time(0, 0)
    """Business-day cutoff (日切), Asia/Shanghai wall-clock time."""
    summary_cache_ttl_s: int = 300
    day_count: DayCount = field(default_factory=DayCount)
    """How late-fee days are counted (the same rule the agency API shows)."""


@dataclass(frozen=True, slots=True)
class Sent:
    """Who sent a request: the channel its money is recorded under, and the device or
    terminal within it (None for a channel that is one sender, like a bank). Here, not in
    payments.inbound, so that the handlers inbound dispatches to need not import it back."""

    channel: str
    sender: str | None = None
