"""The wheel carries every subpackage and the shipped rules (the package list is explicit)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_subpackage_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "piggywatch").rglob("__init__.py")}
    assert found - listed == set()
    assert config["package-dir"]["piggywatch.shipped_rules"] == "rules"
    assert list((ROOT / "rules").glob("*.yaml")), "shipped rules are where the wheel takes them"
