"""The container image is built from every room: a room added to the house but not to the
Dockerfile would install a `paygate` that fails at its first import."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_image_copies_every_package() -> None:
    rooms = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "root_packages"
    ]
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert set(rooms) <= copied, f"not copied into the image: {sorted(set(rooms) - copied)}"
