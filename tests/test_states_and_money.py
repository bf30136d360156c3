"""State machines as data reject illegal edges; fen/yuan conversion is exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.states import BILL, BillStatus
from channels.money import fen_to_yuan, yuan_to_fen
from kernel.errors import IllegalTransition
from payments.states import ATTEMPT, REFUND, AttemptStatus


def test_bill_machine_edges() -> None:
    BILL.check(BillStatus.ISSUED, BillStatus.PAID)
    BILL.check(BillStatus.PAID, BillStatus.SETTLED)
    # A card terminal's reversal or void takes an unsettled payment back; nothing later can.
    BILL.check(BillStatus.PAID, BillStatus.ISSUED)
    for src, dst in [
        (BillStatus.SETTLED, BillStatus.ISSUED),
        (BillStatus.CANCELLED, BillStatus.PAID),
        (BillStatus.EXPIRED, BillStatus.PAID),
        (BillStatus.REFUNDED, BillStatus.PAID),
        (BillStatus.PAID, BillStatus.CANCELLED),
    ]:
        with pytest.raises(IllegalTransition):
            BILL.check(src, dst)


def test_terminal_states_have_no_exits() -> None:
    for machine in (BILL, ATTEMPT, REFUND):
        for state in machine.terminal:
            assert machine.targets(state) == frozenset(), (machine.name, state)


def test_late_success_after_close_is_allowed() -> None:
    ATTEMPT.check(AttemptStatus.CLOSED, AttemptStatus.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        ATTEMPT.check(AttemptStatus.SUCCEEDED, AttemptStatus.CLOSED)


def test_a_reversed_attempt_never_succeeds() -> None:
    ATTEMPT.check(AttemptStatus.SUCCEEDED, AttemptStatus.REVERSED)
    ATTEMPT.check(AttemptStatus.PENDING, AttemptStatus.REVERSED)
    with pytest.raises(IllegalTransition):
        ATTEMPT.check(AttemptStatus.REVERSED, AttemptStatus.SUCCEEDED)
    assert AttemptStatus.REVERSED in ATTEMPT.terminal


@pytest.mark.parametrize(
    ("fen", "text"), [(0, "0.00"), (1, "0.01"), (10, "0.10"), (8880, "88.80"), (-150, "-1.50")]
)
def test_fen_to_yuan_table(fen: int, text: str) -> None:
    assert fen_to_yuan(fen) == text
    assert yuan_to_fen(text) == fen


@given(st.integers(min_value=-(10**13), max_value=10**13))
def test_fen_yuan_round_trip(fen: int) -> None:
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


@pytest.mark.parametrize("bad", ["1.234", "1e3", "", "1,00", "abc", ".5", "1.2.3"])
def test_yuan_parse_is_strict(bad: str) -> None:
    with pytest.raises(ValueError):
        yuan_to_fen(bad)
