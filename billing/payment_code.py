"""Payment codes (缴款码): 20 digits = region 6 + year 2 + category 2 + serial 9 + check 1.

The check digit is Damm's algorithm: it catches every single-digit substitution and every
adjacent transposition (Luhn misses 09↔90), so a mistyped code is rejected before any
database lookup. Serials are a keyed permutation of a per-region-year counter, so a code's
neighbours cannot be derived from it and codes cannot be enumerated.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from kernel.errors import InvalidInput

__all__ = [
    "LENGTH",
    "SERIAL_SPACE",
    "SerialPermutation",
    "check_digit",
    "compose",
    "is_valid",
    "validate",
]

LENGTH = 20
SERIAL_SPACE = 10**9
CATEGORY_CODES = {"FINE": "01", "EXAM_FEE": "02", "TUITION": "03", "OTHER": "09"}

# Damm's totally anti-symmetric quasigroup of order 10 (Damm 2004).
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)
_DIGITS = re.compile(r"^[0-9]+$")


def check_digit(digits: str) -> str:
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return str(interim)


def is_valid(code: str) -> bool:
    """Shape and check digit only; says nothing about whether the bill exists."""
    if len(code) != LENGTH or not _DIGITS.match(code):
        return False
    return check_digit(code) == "0"  # a valid Damm code checks to zero


def validate(code: str) -> str:
    """Return the code or raise a 422 before anything touches the database."""
    if len(code) != LENGTH or not _DIGITS.match(code):
        raise InvalidInput("A payment code is 20 digits.", code="payment_code_malformed")
    if not is_valid(code):
        raise InvalidInput(
            "The payment code's check digit does not match; please re-check the code.",
            code="payment_code_check_failed",
        )
    return code


class SerialPermutation:
    """A keyed bijection on [0, 10⁹): a 4-round Feistel network on 30 bits + cycle walking.

    Each region-year counter value n maps to a distinct serial; without the key the serial
    of n+1 cannot be predicted from the serial of n.
    """

    _HALF_BITS = 15
    _MASK = (1 << _HALF_BITS) - 1
    _ROUNDS = 4

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("serial permutation key must be at least 16 bytes")
        self._key = key

    def _round(self, r: int, value: int, tweak: bytes) -> int:
        msg = tweak + bytes((r,)) + value.to_bytes(2, "big")
        digest = hmac.digest(self._key, msg, hashlib.sha256)  # one-shot C path: same bytes
        return int.from_bytes(digest[:2], "big") & self._MASK

    def _feistel(self, x: int, tweak: bytes) -> int:
        left, right = x >> self._HALF_BITS, x & self._MASK
        for r in range(self._ROUNDS):
            left, right = right, left ^ self._round(r, right, tweak)
        return (left << self._HALF_BITS) | right

    def encode(self, n: int, tweak: bytes = b"") -> int:
        """The serial for counter value n; `tweak` (e.g. region+year) varies the permutation."""
        if not 0 <= n < SERIAL_SPACE:
            raise ValueError("serial counter exhausted for this region and year")
        x = self._feistel(n, tweak)
        while x >= SERIAL_SPACE:  # cycle-walk back into the domain; terminates (bijection)
            x = self._feistel(x, tweak)
        return x


def compose(region: str, year: int, category: str, serial: int) -> str:
    if len(region) != 6 or not _DIGITS.match(region):
        raise InvalidInput("Region code must be 6 digits.", code="region_code_invalid")
    body = f"{region}{year % 100:02d}{CATEGORY_CODES[category]}{serial:09d}"
    return body + check_digit(body)
