"""States of a fiscal e-note, as data."""

from __future__ import annotations

from enum import StrEnum

from kernel.states import StateMachine, edges

__all__ = ["ENOTE", "ENoteStatus"]


class ENoteStatus(StrEnum):
    VALID = "VALID"
    RED_LETTERED = "RED_LETTERED"


E = ENoteStatus
ENOTE = StateMachine(
    "enote",
    # A refund, or the channel taking the payment back, red-letters the note: a red note
    # referencing it is issued, it stays on file.
    edges((E.VALID, E.RED_LETTERED)),
    terminal=frozenset({E.RED_LETTERED}),
    initial=frozenset({E.VALID}),
)
