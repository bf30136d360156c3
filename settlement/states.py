"""States of a treasury deposit batch and of a reconciliation discrepancy, as data."""

from __future__ import annotations

from enum import StrEnum

from kernel.states import StateMachine, edges

__all__ = ["DEPOSIT_BATCH", "DISCREPANCY", "DepositBatchStatus", "DiscrepancyStatus"]


class DepositBatchStatus(StrEnum):
    DRAFT = "DRAFT"
    EXPORTED = "EXPORTED"


class DiscrepancyStatus(StrEnum):
    HELD = "HELD"
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"
    ACCEPTED = "ACCEPTED"


D = DepositBatchStatus
DEPOSIT_BATCH = StateMachine(
    "deposit_batch",
    edges((D.DRAFT, D.EXPORTED)),
    # Once exported the row refuses any change (the deposit_batches_frozen trigger).
    terminal=frozenset({D.EXPORTED}),
    initial=frozenset({D.DRAFT}),
)

X = DiscrepancyStatus
DISCREPANCY = StateMachine(
    "discrepancy",
    edges(
        (X.HELD, X.OPEN),  # the late-file window passed
        (X.OPEN, X.HELD),  # a re-run whose day is still inside the late-file window
        (X.HELD, X.RESOLVED),  # cleared by a re-run, or resolved by a person
        (X.OPEN, X.RESOLVED),
        (X.HELD, X.ACCEPTED),  # a person accepts the difference as it is
        (X.OPEN, X.ACCEPTED),
    ),
    terminal=frozenset({X.RESOLVED, X.ACCEPTED}),
    # A platform-only difference is HELD while the channel's file may still come late.
    initial=frozenset({X.HELD, X.OPEN}),
)
