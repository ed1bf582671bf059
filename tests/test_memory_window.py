"""How much full-resolution history the daemon keeps in memory: what its rules read, not
always an hour (issue 13: at statements top_k 5000 the store's points are most of the RSS).
Rules reaching beyond the hour read the durable history for their older part, as before."""

from __future__ import annotations

from pathlib import Path

from piggywatch.daemon import (
    MEMORY_WINDOW,
    MEMORY_WINDOW_SLACK,
    MIN_MEMORY_WINDOW,
    memory_window,
)
from piggywatch.demo.run import shipped_rules_dir
from piggywatch.rules.loader import RuleGroup, load_rule_files

MINUTE = 60.0


def groups_of(tmp_path: Path, *exprs: str) -> list[RuleGroup]:
    rules = "".join(f"      - alert: A{i}\n        expr: {expr}\n"
                    for i, expr in enumerate(exprs))
    path = tmp_path / "rules.yaml"
    path.write_text(f"groups:\n  - name: g\n    rules:\n{rules}")
    return load_rule_files([path])


def test_the_shipped_rules_keep_their_longest_in_memory_range_and_a_minute() -> None:
    groups = load_rule_files(sorted(shipped_rules_dir().glob("*.yaml")))
    # Their longest range is [10m]; the [6h] disk forecast reads the durable history.
    assert memory_window(groups) == 10 * MINUTE + MEMORY_WINDOW_SLACK


def test_a_longer_range_or_offset_widens_the_window(tmp_path: Path) -> None:
    assert memory_window(groups_of(tmp_path, "rate(x[10m]) > 0", "rate(y[30m]) > 0")) == \
        30 * MINUTE + MEMORY_WINDOW_SLACK
    # An instant selector reads five minutes back from its offset.
    assert memory_window(groups_of(tmp_path, "x offset 20m > 0")) == \
        25 * MINUTE + MEMORY_WINDOW_SLACK


def test_the_window_is_never_longer_than_the_hour(tmp_path: Path) -> None:
    assert memory_window(groups_of(tmp_path, "rate(x[1h]) > 0")) == MEMORY_WINDOW
    assert memory_window(groups_of(tmp_path, "rate(x[61m]) > 0")) == MEMORY_WINDOW
    # Beyond the hour, memory serves only the recent part: the rest is the history's.
    assert memory_window(groups_of(tmp_path, "rate(x[6h]) > 0", "rate(y[10m]) > 0")) == \
        10 * MINUTE + MEMORY_WINDOW_SLACK


def test_never_shorter_than_a_history_recording_period(tmp_path: Path) -> None:
    # The durable history copies the kept series' new points from memory every 5 minutes.
    assert memory_window(groups_of(tmp_path, "x > 0")) == MIN_MEMORY_WINDOW
    assert memory_window(groups_of(tmp_path, "rate(x[7d]) > 0")) == MIN_MEMORY_WINDOW
    assert memory_window([]) == MIN_MEMORY_WINDOW
