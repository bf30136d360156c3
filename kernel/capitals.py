"""Amounts in Chinese capitals (人民币大写) as printed on notes and payment notices.

Rules (as banks and the fiscal note specification write them):
- digits 零壹贰叁肆伍陆柒捌玖, positions 拾佰仟 inside a section, sections 万 and 亿;
- a run of zeros inside the integer part is read as one 零; zeros at the end of a section
  are silent; a 万 section that is all zeros drops its 万 (壹亿零壹元), 亿 is always written;
- a zero between 元 and 分 is read (壹元零伍分); an amount without 角 and 分 ends in 整
  (壹佰元整), one that ends in 角 or 分 does not;
- an amount under one yuan starts at its first non-zero unit (伍角 / 叁分), never "零元";
- negative amounts (red-letter notes) are prefixed with 负.
"""

from __future__ import annotations

__all__ = [
    "rmb_capitals",
]

DIGITS = "零壹贰叁肆伍陆柒捌玖"
_POSITIONS = ("", "拾", "佰", "仟")
MAX_FEN = 10**18 - 1
"""Far beyond any bill; larger amounts are refused rather than printed oddly."""


def _section(value: int) -> str:
    """A 0..9999 section: zeros inside collapse to one 零, trailing zeros are silent."""
    out: list[str] = []
    pending_zero = False
    for pos in range(3, -1, -1):
        digit = value // 10**pos % 10
        if digit == 0:
            if out:
                pending_zero = True
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(DIGITS[digit] + _POSITIONS[pos])
    return "".join(out)


def _integer(yuan: int) -> str:
    """Whole yuan: 亿 and 万 split the number; a gap below a split reads one 零."""
    if yuan >= 10**8:
        high, low = divmod(yuan, 10**8)
        text = _integer(high) + "亿"
        return text + ("零" if low < 10**7 else "") + _integer(low) if low else text
    if yuan >= 10**4:
        high, low = divmod(yuan, 10**4)
        text = _section(high) + "万"
        return text + ("零" if low < 1000 else "") + _section(low) if low else text
    return _section(yuan)


def rmb_capitals(fen: int) -> str:
    """`12345` → 壹佰贰拾叁元肆角伍分; `10000` → 壹佰元整; `0` → 零元整."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError("amounts are integer fen")
    if abs(fen) > MAX_FEN:
        raise ValueError("amount too large to print in capitals")
    if fen < 0:
        return "负" + rmb_capitals(-fen)
    yuan, rest = divmod(fen, 100)
    jiao, fen_digit = divmod(rest, 10)
    head = _integer(yuan)
    if not head and not rest:
        return "零元整"
    out = head + "元" if head else ""
    if jiao:
        out += DIGITS[jiao] + "角"
    elif fen_digit and head:
        out += "零"  # 壹元零伍分: the missing 角 is read between 元 and 分
    if fen_digit:
        out += DIGITS[fen_digit] + "分"
    elif not jiao:
        out += "整"
    return out
