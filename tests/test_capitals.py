"""Amounts in Chinese capitals (人民币大写), the table of tricky cases."""

from __future__ import annotations

import pytest

from kernel.capitals import rmb_capitals

CASES = [
    (12345, "壹佰贰拾叁元肆角伍分"),
    (10000, "壹佰元整"),
    (0, "零元整"),
    # only fen / only jiao / under one yuan
    (1, "壹分"),
    (5, "伍分"),
    (50, "伍角"),
    (57, "伍角柒分"),
    # a zero between 元 and 分 is read; no 整 after 角 or 分
    (105, "壹元零伍分"),
    (150, "壹元伍角"),
    (100005, "壹仟元零伍分"),
    # zeros inside a section collapse to one 零
    (100100, "壹仟零壹元整"),
    (101000, "壹仟零壹拾元整"),
    (1001000, "壹万零壹拾元整"),
    (1010100, "壹万零壹佰零壹元整"),
    (168032, "壹仟陆佰捌拾元叁角贰分"),
    (200600, "贰仟零陆元整"),
    # 万 boundaries
    (1000000, "壹万元整"),
    (10000000, "壹拾万元整"),
    (10000100, "壹拾万零壹元整"),
    (100000000, "壹佰万元整"),
    (1000000100, "壹仟万零壹元整"),
    (1000100000, "壹仟万壹仟元整"),
    (1234567800, "壹仟贰佰叁拾肆万伍仟陆佰柒拾捌元整"),
    # 亿 boundaries: an all-zero 万 section is silent, 亿 is always written
    (10000000000, "壹亿元整"),
    (10000000100, "壹亿零壹元整"),
    (10001000000, "壹亿零壹万元整"),
    (10100000000, "壹亿零壹佰万元整"),
    (11000000000, "壹亿壹仟万元整"),
    (110000000000, "壹拾壹亿元整"),
    (100000000000000, "壹万亿元整"),
    (100010000000000, "壹万零壹亿元整"),
    (123456789012345, "壹万贰仟叁佰肆拾伍亿陆仟柒佰捌拾玖万零壹佰贰拾叁元肆角伍分"),
    # red-letter notes print negative totals
    (-12345, "负壹佰贰拾叁元肆角伍分"),
    (-5, "负伍分"),
]


@pytest.mark.parametrize(("fen", "expected"), CASES)
def test_capitals(fen: int, expected: str) -> None:
    assert rmb_capitals(fen) == expected


def test_only_integer_fen() -> None:
    with pytest.raises(TypeError):
        rmb_capitals(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rmb_capitals(True)
    with pytest.raises(ValueError, match="too large"):
        rmb_capitals(10**18)
