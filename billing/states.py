"""The bill's states and the one machine that says which may follow which."""

from __future__ import annotations

from enum import StrEnum

from kernel.states import StateMachine, edges

__all__ = ["BILL", "BillStatus"]


class BillStatus(StrEnum):
    ISSUED = "ISSUED"
    PAID = "PAID"
    SETTLED = "SETTLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


B = BillStatus
BILL = StateMachine(
    "bill",
    edges(
        (B.ISSUED, B.PAID),
        # The payment was reversed or voided at a card terminal before settlement.
        (B.PAID, B.ISSUED),
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
    initial=frozenset({B.ISSUED}),
)
"""A bill is paid once; later payments of it are duplicates recorded against receipts."""
