"""State machines as data: each is a set of allowed edges and one check that raises.

Each machine's table is the single source of truth for what may follow what; services call
`MACHINE.check(current, target)` before a guarded UPDATE (`... WHERE status = current`), and
set-based SQL takes its guards from `MACHINE.sources(target)` (rendered by `sql_in`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from kernel.errors import IllegalTransition

__all__ = ["StateMachine", "edges", "sql_in"]


@dataclass(frozen=True, slots=True)
class StateMachine:
    name: str
    edges: frozenset[tuple[str, str]]
    terminal: frozenset[str] = frozenset()
    initial: frozenset[str] = frozenset()
    """The states a record is created in (the diagram's `[*] -->` arrows)."""

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

    def sources(self, target: str) -> frozenset[str]:
        """The states that may become `target` (the guard of a set-based UPDATE)."""
        found = frozenset(s for s, d in self.edges if d == target)
        if not found:
            raise ValueError(f"{self.name}: nothing may become {target}")
        return found

    @property
    def live(self) -> frozenset[str]:
        """The states that may still change (every state but the terminal ones)."""
        return frozenset(self.states) - self.terminal

    @property
    def states(self) -> tuple[str, ...]:
        """Every state the machine names, sorted."""
        named = {s for edge in self.edges for s in edge} | self.initial | self.terminal
        return tuple(sorted(named))

    def mermaid(self) -> str:
        """The machine as a Mermaid `stateDiagram-v2` (edges sorted, so the text is stable)."""
        out = ["stateDiagram-v2"]
        out += [f"    [*] --> {s}" for s in sorted(self.initial)]
        out += [f"    {s} --> {d}" for s, d in sorted(self.edges)]
        out += [f"    {s} --> [*]" for s in sorted(self.terminal)]
        return "\n".join(out)


def edges(*pairs: tuple[StrEnum, StrEnum]) -> frozenset[tuple[str, str]]:
    return frozenset((str(a), str(b)) for a, b in pairs)


def sql_in(states: Iterable[str]) -> str:
    """`('A', 'B')`: a set of states as a SQL list literal, for statements built once at
    import. States are machine constants (upper-case words), never user input."""
    names = sorted(states)
    if not names or not all(n.replace("_", "").isalnum() and n.isupper() for n in names):
        raise ValueError(f"not state names: {names!r}")
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"
