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
    ),
    terminal=frozenset({A.SUCCEEDED, A.FAILED}),
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
