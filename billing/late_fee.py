"""Late payment surcharge for fines (加处罚款, 行政处罚法 Art. 72).

    surcharge = min(principal, principal × 3% × overdue_days)

Rounding rule (documented, one place): the product is computed in integer fen and
truncated toward zero (floor, amounts are positive) — any fraction of a fen is in the
payer's favour. Overdue days are Asia/Shanghai calendar days after the due date, minus a
configurable grace (the national rule does not settle whether holidays count).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

__all__ = [
    "AmountDue",
    "DayCount",
    "amount_due",
]

DAILY_RATE_BP = 300  # 3% per day, in basis points


@dataclass(frozen=True, slots=True)
class DayCount:
    """How overdue days are counted. Day 1 is the first calendar day after the due date."""

    grace_days: int = 0

    def overdue_days(self, due: date, on: date) -> int:
        return max(0, (on - due).days - self.grace_days)


@dataclass(frozen=True, slots=True)
class AmountDue:
    principal: int
    overdue_days: int
    late_fee: int

    @property
    def total(self) -> int:
        return self.principal + self.late_fee


def amount_due(
    principal: int,
    due: date,
    on: date,
    *,
    rule: str,
    day_count: DayCount | None = None,
) -> AmountDue:
    """The amount due on `on` (an Asia/Shanghai date) for a bill due on `due`."""
    if principal <= 0:
        raise ValueError("principal must be positive")
    if rule == "NONE":
        return AmountDue(principal, 0, 0)
    if rule != "FINE_DAILY_3PCT":
        raise ValueError(f"unknown late fee rule {rule!r}")
    days = (day_count or DayCount()).overdue_days(due, on)
    fee = min(principal, principal * DAILY_RATE_BP * days // 10_000)
    return AmountDue(principal, days, fee)
