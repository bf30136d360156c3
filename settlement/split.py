"""Sum-preserving integer splits (largest remainder, deterministic tie-break).

The treasury rejects a batch whose detail lines do not add up to its header, so a split may
neither lose nor invent a fen: each share is floor(total × w / Σw) plus one fen for the
shares with the largest remainders, ties broken by position (earlier first).
"""

from __future__ import annotations

from collections.abc import Sequence


def split_fen(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` fen by non-negative integer weights; Σ result == total exactly.

    Every share is within one fen of its exact proportion, and a zero weight gets nothing.
    Negative totals (refunds) split as the mirror of the positive split.
    """
    if not weights or any(w < 0 for w in weights):
        raise ValueError("weights must be non-empty and non-negative")
    wsum = sum(weights)
    if wsum == 0:
        raise ValueError("weights must not all be zero")
    if total < 0:
        return [-s for s in split_fen(-total, weights)]
    base = [total * w // wsum for w in weights]
    short = total - sum(base)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % wsum), i))
    for i in order[:short]:
        base[i] += 1
    return base
