"""State machines as data: each is a set of allowed edges and one check that raises.

Each machine's table is the single source of truth for what may follow what; services call
`MACHINE.check(current, target)` before a guarded UPDATE (`... WHERE status = current`), and
set-based SQL takes its guards from `MACHINE.sources(target)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kernel.errors import IllegalTransition


@dataclass(frozen=True, slots=True)
class StateMachine:
    name: str
    edges: frozenset[tuple[str, str]]
    terminal: frozenset[str] = frozenset()

    def allowed(self, src: str, dst: str) -> bool:
        return (src, dst) in self.edges

    def check(self, src: str, dst: str) -> None:
        if not self.allowed(src, dst):
            raise IllegalTransition(
                f"{self.name} cannot go from {src} to {dst}",
                machine=self.name,
                current=src,
                target=dst,
            )

    def targets(self, src: str) -> frozenset[str]:
        return frozenset(d for s, d in self.edges if s == src)


def edges(*pairs: tuple[StrEnum, StrEnum]) -> frozenset[tuple[str, str]]:
    return frozenset((str(a), str(b)) for a, b in pairs)
