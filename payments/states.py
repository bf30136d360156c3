"""States of a payment attempt and of a refund, as data."""

from __future__ import annotations

from enum import StrEnum

from kernel.states import StateMachine, edges

__all__ = ["ATTEMPT", "REFUND", "AttemptStatus", "RefundStatus"]


class AttemptStatus(StrEnum):
    CREATED = "CREATED"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    UNKNOWN = "UNKNOWN"
    REVERSED = "REVERSED"
    """The channel took the payment back before settlement (card terminal reversal or void):
    as if it never happened; it can never succeed again."""


class RefundStatus(StrEnum):
    REQUESTED = "REQUESTED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


A = AttemptStatus
ATTEMPT = StateMachine(
    "payment_attempt",
    edges(
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
        # A card terminal's reversal (冲正) or void (撤销), before or after the success.
        (A.PENDING, A.REVERSED),
        (A.UNKNOWN, A.REVERSED),
        (A.CLOSED, A.REVERSED),
        (A.SUCCEEDED, A.REVERSED),
    ),
    terminal=frozenset({A.FAILED, A.REVERSED}),
    # A bank's attempt starts PENDING: the bank already holds the payer, nothing to call.
    initial=frozenset({A.CREATED, A.PENDING}),
)

R = RefundStatus
REFUND = StateMachine(
    "refund",
    edges(
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
    initial=frozenset({R.REQUESTED}),
)
