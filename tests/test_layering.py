"""The rooms' layering is checked, and the check bites: `lint-imports` passes on the real
tree and fails on a copy of it where a fixture adds one forbidden import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every package the contracts name (a new room added there is copied too).
ROOMS: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> Path:
    """The Python sources of every room plus pyproject.toml (the contracts)."""
    for room in ROOMS:
        for src in (ROOT / room).rglob("*.py"):
            target = dest / src.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    shutil.copyfile(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy's packages shadow the editable install of the real ones.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "pyproject.toml"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_real_tree_keeps_every_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("kernel/_fixture.py", "import gateway.settings", "The kernel imports nothing of ours"),
        (
            "channels/alipay/_fixture.py",
            "from billing import bills",
            "Channels import only the kernel",
        ),
        ("billing/_fixture.py", "import payments.confirm", "Rooms are layered"),
        ("settlement/_fixture.py", "import bench.runner", "Nothing imports the service"),
    ],
)
def test_a_forbidden_import_fails_the_lint(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _copy_tree(tmp_path)
    (tree / module).write_text(f'"""A forbidden import, for the test."""\n\n{line}\n')
    result = _lint(tree)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    broken = out[out.index("Broken contracts") :]
    assert contract in broken, out
    # The copy was analysed, not the installed tree: the fixture is named in the report.
    assert module.removesuffix(".py").replace("/", ".") in broken, out
