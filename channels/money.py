"""Fen ↔ yuan strings, used only at a channel's edge. No float ever touches an amount."""

from __future__ import annotations

import re

__all__ = [
    "fen_to_yuan",
    "yuan_to_fen",
]

_YUAN = re.compile(r"^(-?)(\d{1,12})(?:\.(\d{1,2}))?$")


def fen_to_yuan(fen: int) -> str:
    """12345 → "123.45"; always exactly two decimals, as Alipay and banks require."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def yuan_to_fen(text: str) -> int:
    """ "123.45" → 12345; strict: at most two decimals, no exponent, no spaces."""
    m = _YUAN.match(text.strip())
    if m is None:
        raise ValueError(f"not a yuan amount: {text!r}")
    sign, whole, frac = m.groups()
    fen = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    return -fen if sign else fen
