"""Payment-code check digit and serial permutation; the late-fee table."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.late_fee import DayCount, amount_due
from billing.payment_code import (
    SERIAL_SPACE,
    SerialPermutation,
    check_digit,
    compose,
    is_valid,
    validate,
)
from kernel.errors import InvalidInput

bodies = st.text(alphabet="0123456789", min_size=19, max_size=19)


@given(bodies, st.integers(0, 18), st.integers(1, 9))
def test_every_single_digit_substitution_is_caught(body: str, pos: int, delta: int) -> None:
    code = body + check_digit(body)
    assert is_valid(code)
    wrong = code[:pos] + str((int(code[pos]) + delta) % 10) + code[pos + 1 :]
    assert not is_valid(wrong)


@given(bodies, st.integers(0, 18))
def test_every_adjacent_transposition_is_caught(body: str, pos: int) -> None:
    code = body + check_digit(body)
    if code[pos] == code[pos + 1]:
        return  # swapping equal digits changes nothing
    swapped = code[:pos] + code[pos + 1] + code[pos] + code[pos + 2 :]
    assert not is_valid(swapped)


def test_luhn_blind_spot_09_90_is_caught() -> None:
    body = "3301002601" + "000000090"
    code = body + check_digit(body)
    swapped = code.replace("090", "009", 1)
    assert swapped != code
    assert not is_valid(swapped)


@pytest.mark.parametrize(
    ("code", "error"),
    [("1234", "payment_code_malformed"), ("3301002601000000abc1", "payment_code_malformed")],
)
def test_validate_rejects_shape(code: str, error: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate(code)
    assert exc.value.code == error


def test_compose_layout() -> None:
    code = compose("330100", 2026, "FINE", 123)
    assert code[:6] == "330100"
    assert code[6:8] == "26"
    assert code[8:10] == "01"
    assert code[10:19] == "000000123"
    assert validate(code) == code
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    with pytest.raises(InvalidInput) as exc:
        validate(wrong)
    assert exc.value.code == "payment_code_check_failed"


def test_serial_permutation_is_a_bijection_on_a_sample() -> None:
    perm = SerialPermutation(b"k" * 32)
    outs = [perm.encode(n, b"33010026") for n in range(5000)]
    assert len(set(outs)) == len(outs)
    assert all(0 <= x < SERIAL_SPACE for x in outs)
    # Neighbouring counters do not give neighbouring serials.
    assert sum(abs(a - b) == 1 for a, b in itertools.pairwise(outs)) == 0
    # A different key or tweak gives a different permutation.
    assert outs[:50] != [SerialPermutation(b"j" * 32).encode(n, b"33010026") for n in range(50)]
    assert outs[:50] != [perm.encode(n, b"33010027") for n in range(50)]


@settings(max_examples=200)
@given(st.integers(0, SERIAL_SPACE - 1), st.integers(0, SERIAL_SPACE - 1))
def test_serial_permutation_injective(a: int, b: int) -> None:
    perm = SerialPermutation(b"0123456789abcdef")
    assert (perm.encode(a) == perm.encode(b)) == (a == b)


DUE = date(2026, 11, 1)


@pytest.mark.parametrize(
    ("days", "fee"),
    [
        (0, 0),  # paid on the due date
        (1, 600),  # 3% of 200.00 yuan
        (15, 9_000),
        (33, 19_800),  # 99%
        (34, 20_000),  # would be 102%: capped at the fine itself
        (100, 20_000),
    ],
)
def test_late_fee_table(days: int, fee: int) -> None:
    due = amount_due(20_000, DUE, DUE + timedelta(days=days), rule="FINE_DAILY_3PCT")
    assert due.late_fee == fee
    assert due.total == 20_000 + fee
    assert due.overdue_days == days


def test_late_fee_rounds_toward_payer_and_respects_grace() -> None:
    # 3% of 0.33 yuan is 0.99 fen: truncated to 0.
    assert amount_due(33, DUE, DUE + timedelta(days=1), rule="FINE_DAILY_3PCT").late_fee == 0
    graced = amount_due(
        20_000, DUE, DUE + timedelta(days=3), rule="FINE_DAILY_3PCT", day_count=DayCount(2)
    )
    assert graced.overdue_days == 1
    assert graced.late_fee == 600
    assert amount_due(20_000, DUE, DUE - timedelta(days=5), rule="FINE_DAILY_3PCT").late_fee == 0
    assert amount_due(20_000, DUE, DUE + timedelta(days=50), rule="NONE").late_fee == 0
