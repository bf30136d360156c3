"""Each room declares its public surface: a module another room imports from has `__all__`,
and what other rooms (and the benchmarks) take from it is in that `__all__`."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = (
    "kernel",
    "channels",
    "billing",
    "ledger",
    "payments",
    "enotes",
    "kiosks",
    "settlement",
    "gateway",
)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p) for room in ROOMS for p in (ROOT / room).rglob("*.py")}


def _room(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _imports(tree: ast.Module, me: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Names bound to our modules, and (module, name) taken by `from m import name`."""
    aliases: dict[str, str] = {}
    taken: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:
                    aliases[a.asname or a.name] = full
                elif node.module in MODULES and _room(node.module) != me:
                    taken.append((node.module, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:  # `import a.b` binds `a`; `import a.b as c` binds a.b
                    aliases[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0]
                    )
    return aliases, taken


def _taken(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every name this file takes from a module of another room, by
    `from m import name` or by `alias.name` after `import m as alias` / `from p import m`."""
    me = _room(_name(path))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, out = _imports(tree, me)
    for node in ast.walk(tree):
        chain: list[str] = []
        value: ast.expr | None = node if isinstance(node, ast.Attribute) else None
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if not (isinstance(value, ast.Name) and value.id in aliases):
            continue
        module = aliases[value.id]
        for part in reversed(chain):
            if f"{module}.{part}" not in MODULES:
                if _room(module) != me:
                    out.append((module, part))
                break
            module = f"{module}.{part}"
    return out


def test_what_other_rooms_take_is_declared_in_all() -> None:
    undeclared: dict[str, set[str]] = defaultdict(set)
    for room in (*ROOMS, "bench"):
        for path in (ROOT / room).rglob("*.py"):
            for module, name in _taken(path):
                surface = getattr(importlib.import_module(module), "__all__", None)
                if surface is None or name not in surface:
                    undeclared[module].add(f"{name} (by {path.relative_to(ROOT)})")
    assert not undeclared, dict(undeclared)


def test_the_scan_sees_cross_room_uses() -> None:
    """The scanner itself: it finds both import forms (so the test above can fail)."""
    taken = set(_taken(ROOT / "payments" / "attempts.py"))
    assert ("billing.payer", "refusal") in taken  # bills.refusal(...) via `payer as bills`
    assert ("billing.models", "Bill") in taken  # from billing.models import Bill
    assert not any(module.startswith("payments.") for module, _ in taken)
