"""docs/configuration.md is the generator's output for the current settings model, so the
reference cannot drift from the keys the daemon accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from piggywatch.config import Settings
from piggywatch.config_reference import leaf_paths, nested_model, render, sections

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def model_key_paths(model: type[BaseModel], prefix: str = "",
                    seen: tuple[type[BaseModel], ...] = ()) -> list[str]:
    """Every key path of ``model``, found independently of the generator's sections."""
    paths: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else (field.alias or name)
        paths.append(path)
        sub, suffix = nested_model(field.annotation)
        if sub is not None and sub not in seen and sub is not model:
            paths += model_key_paths(sub, path + suffix, (*seen, model))
    return paths


def test_committed_reference_is_the_generators_output() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run "
        "`python -m piggywatch.config_reference > docs/configuration.md`")


def test_every_key_of_the_model_is_documented() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    missing = [p for p in model_key_paths(Settings) if f"| `{p}` |" not in text]
    assert missing == []
    assert sorted(leaf_paths()) == sorted(model_key_paths(Settings))


@pytest.mark.parametrize("path", [
    "server.api_token", "targets[].collectors.statements.schema",
    "sources.custom_sql[].sql", "receivers[].email.from", "receivers[].alertmanager.url",
    "route.continue", "route.routes", "escalations.<name>[].notify",
    "inhibit_rules[].equal", "time_intervals[].times[].start_time", "sentry.dsn",
    "logging.format", "no_data.groups",
])
def test_keys_appear_under_the_names_users_write(path: str) -> None:
    assert path in leaf_paths()


def test_every_key_says_what_it_means() -> None:
    unexplained = [row.path for s in sections() for row in s.rows if not row.meaning]
    assert unexplained == []


def test_every_meaning_is_the_fields_own_description() -> None:
    # Field documentation lives in one place: the pydantic description (a docstring under
    # the field, or Field(description=...)); a nested model's docstring only as a fallback.
    def walk(model: type[BaseModel], seen: tuple[type[BaseModel], ...]) -> list[str]:
        elsewhere = []
        for name, field in model.model_fields.items():
            sub, _ = nested_model(field.annotation)
            if not field.description and (sub is None or not sub.__doc__):
                elsewhere.append(f"{model.__name__}.{name}")
            if sub is not None and sub not in seen and sub is not model:
                elsewhere += walk(sub, (*seen, model))
        return elsewhere

    assert sorted(set(walk(Settings, ()))) == []


def rows_by_path() -> dict[str, Any]:
    return {row.path: row for s in sections() for row in s.rows}


def test_types_and_defaults_come_from_the_model() -> None:
    rows = rows_by_path()
    assert (rows["evaluation_interval"].type, rows["evaluation_interval"].default) == (
        "duration", "`15s`")
    assert rows["route.group_wait"].type == "duration (0s allowed), optional"
    assert rows["targets"].default == "**required**"
    assert rows["receivers[].email.tls"].type == "`starttls` \\| `tls` \\| `none`"
    assert rows["targets[].dsn"].type == "secret string"
