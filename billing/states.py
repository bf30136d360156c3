"""State machines as data: each is a set of allowed edges and one check that raises.

The tables below are the single source of truth for what may follow what; services call
`MACHINE.check(current, target)` before a guarded UPDATE (`... WHERE status = current`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from billing.errors import IllegalTransition


class BillStatus(StrEnum):
    ISSUED = "ISSUED"
    PAID = "PAID"
    SETTLED = "SETTLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


class AttemptStatus(StrEnum):
    CREATED = "CREATED"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    UNKNOWN = "UNKNOWN"


class RefundStatus(StrEnum):
    REQUESTED = "REQUESTED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class StateMachine:
    name: str
    edges: frozenset[tuple[str, str]]
    terminal: frozenset[str] = frozenset()

    def allowed(self, src: str, dst: str) -> bool:
        return (src, dst) in self.edges

    def check(self, src: str, dst: str) -> None:
        if not self.allowed(src, dst):
            raise IllegalTransition(
                f"{self.name} cannot go from {src} to {dst}",
                machine=self.name,
                current=src,
                target=dst,
            )

    def targets(self, src: str) -> frozenset[str]:
        return frozenset(d for s, d in self.edges if s == src)


def _edges(*pairs: tuple[StrEnum, StrEnum]) -> frozenset[tuple[str, str]]:
    return frozenset((str(a), str(b)) for a, b in pairs)


B = BillStatus
BILL = StateMachine(
    "bill",
    _edges(
        (B.ISSUED, B.PAID),
        (B.ISSUED, B.CANCELLED),
        (B.ISSUED, B.EXPIRED),
        (B.PAID, B.SETTLED),
        (B.PAID, B.PARTIALLY_REFUNDED),
        (B.PAID, B.REFUNDED),
        (B.SETTLED, B.PARTIALLY_REFUNDED),
        (B.SETTLED, B.REFUNDED),
        (B.PARTIALLY_REFUNDED, B.PARTIALLY_REFUNDED),
        (B.PARTIALLY_REFUNDED, B.REFUNDED),
        (B.PARTIALLY_REFUNDED, B.SETTLED),
    ),
    terminal=frozenset({B.CANCELLED, B.EXPIRED, B.REFUNDED}),
)
"""A bill is paid once; later payments of it are duplicates recorded against receipts."""

A = AttemptStatus
ATTEMPT = StateMachine(
    "payment_attempt",
    _edges(
        (A.CREATED, A.PENDING),
        (A.CREATED, A.FAILED),  # the channel rejected the create call
        (A.CREATED, A.UNKNOWN),  # the create call's outcome is unknown: query later
        (A.PENDING, A.SUCCEEDED),
        (A.PENDING, A.FAILED),
        (A.PENDING, A.CLOSED),
        (A.PENDING, A.UNKNOWN),
        (A.UNKNOWN, A.PENDING),
        (A.UNKNOWN, A.SUCCEEDED),
        (A.UNKNOWN, A.FAILED),
        (A.UNKNOWN, A.CLOSED),
        # A success that arrives after our expiry closed the attempt is real money.
        (A.CLOSED, A.SUCCEEDED),
    ),
    terminal=frozenset({A.SUCCEEDED, A.FAILED}),
)

R = RefundStatus
REFUND = StateMachine(
    "refund",
    _edges(
        (R.REQUESTED, R.PROCESSING),
        (R.PROCESSING, R.SUCCEEDED),
        (R.PROCESSING, R.FAILED),
        (R.PROCESSING, R.UNKNOWN),
        (R.UNKNOWN, R.SUCCEEDED),
        (R.UNKNOWN, R.FAILED),
        (R.UNKNOWN, R.PROCESSING),  # re-sent with the same idempotency key
        (R.FAILED, R.PROCESSING),  # retried by a person
    ),
    terminal=frozenset({R.SUCCEEDED}),
)
