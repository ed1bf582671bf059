"""The README stays a true user's document: every metric listed, the two set-up commands."""

from __future__ import annotations

import re
from importlib import import_module
from pathlib import Path

from piggywatch.alerting import incidents, outbox
from piggywatch.collectors.postgres import connections, database, statements, tables
from piggywatch.jobs import SOURCES
from piggywatch.rules import manager
from piggywatch.selfmetrics import SPECS as SELF_SPECS

README = (Path(__file__).parent.parent / "README.md").read_text()
FAMILIES = ("pg_stat_database", "pg_stat_statements", "pg_stat_user_tables",
            "piggywatch_collector", "pg_settings", "edge_function_duration_seconds",
            "edge_function_duration")


def listed(name: str) -> bool:
    if f"`{name}`" in README:
        return True
    return any(name.startswith(f) and f"`{name[len(f):]}`" in README for f in FAMILIES)


def test_every_exported_metric_is_in_the_readme() -> None:
    specs = [*SELF_SPECS, *connections.SPECS, *database.SPECS, *statements.SPECS,
             *tables.SPECS, *manager.RULE_SPECS, *incidents.SPECS, *outbox.SPECS,
             *(spec for module in SOURCES.values() for spec in import_module(module).SPECS)]
    missing = [s.name for s in specs if not listed(s.name)]
    assert missing == []


def test_readme_starts_with_the_two_setup_commands_ci_runs() -> None:
    commands = re.findall(r"```sh\n(.+?)\n```", README, re.DOTALL)[:2]
    assert commands == ['pip install ".[demo]" && piggywatch demo',
                        'pip install -e ".[dev]" && python -m pytest']
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()
    # The first one, in a new virtualenv with the system's PostgreSQL hidden.
    assert ".ci/fresh-demo" in ci.splitlines()
    fresh = (Path(__file__).parent.parent / ".ci" / "fresh-demo").read_text()
    assert 'pip" install -q ".[demo]"' in fresh


def test_readme_lists_every_grant_the_monitoring_role_holds() -> None:
    from piggywatch.demo.cluster import MONITORING_GRANTS

    for grant in MONITORING_GRANTS:
        for statement in grant.statements:
            assert statement.format(role="piggywatch") + ";" in README, statement
