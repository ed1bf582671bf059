"""Which metrics keep their whole memory window: those whose past the loaded rules read (issue
13: at statements top_k 5000 most of the RSS was the history of series only ever read as an
instant, or not at all). Every other series keeps what an instant read needs
(tests/test_store_recent.py proves such a store answers those reads exactly)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from piggywatch.config import Settings
from piggywatch.daemon import Daemon, history_names, memory_window
from piggywatch.demo.run import shipped_rules_dir
from piggywatch.rules.loader import load_rule_files
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of
from piggywatch.store.series import LabelMatcher, MatchOp

# What the shipped rules read over time: two of the five statements families
# (rate(...[10m])), the disk forecast's [6h] (which the durable history records too), and
# the ratios of the database, Redis and edge function rules.
SHIPPED = frozenset({
    "pg_stat_statements_calls_total", "pg_stat_statements_seconds_total",
    "pg_database_size_bytes", "pg_stat_database_blks_hit", "pg_stat_database_blks_read",
    "redis_keyspace_hits_total", "redis_keyspace_misses_total",
    "edge_function_duration_seconds_count",
})


def daemon_with_rules(tmp_path: Path, rule_files: list[str]) -> Daemon:
    settings = Settings.model_validate({
        "targets": [{"name": "main", "dsn": "postgresql://127.0.0.1:1/x"}],
        "rule_files": rule_files, "state": f"sqlite:///{tmp_path}/state.db"})
    return Daemon(settings, base_dir=tmp_path)


def names_of(tmp_path: Path, *exprs: str, annotation: str = "") -> frozenset[str] | None:
    rules = "".join(f"      - alert: A{i}\n        expr: '{expr}'\n"
                    f"        annotations: {{description: '{annotation}'}}\n"
                    for i, expr in enumerate(exprs))
    path = tmp_path / "rules.yaml"
    path.write_text(f"groups:\n  - name: g\n    rules:\n{rules}")
    return history_names(load_rule_files([path]), [])


def test_the_shipped_rules_keep_the_history_of_what_they_read_over_time(tmp_path: Path) -> None:
    daemon = daemon_with_rules(tmp_path, [str(shipped_rules_dir() / "*.yaml")])
    try:
        assert daemon.rules is not None and daemon.reload_rules()
        groups = daemon.rules.groups()
        recorded = daemon.rules.long_range_selectors(memory_window(groups))
        assert history_names(groups, recorded) == SHIPPED
        # As the daemon applies it: a ranged family keeps every point, another a few.
        store = daemon.store
        labels = labels_of(queryid="1", target="main")
        start = time.time()  # the daemon published its own metrics at its start
        for k in range(300):
            now = start + 2 * k
            store.publish("main/statements", [
                Sample("pg_stat_statements_calls_total", labels, k, now),
                Sample("pg_stat_statements_rows_total", labels, k, now)], now)
        assert len(store.history("pg_stat_statements_calls_total", labels)) == 300
        assert len(store.history("pg_stat_statements_rows_total", labels)) < 60
    finally:
        daemon.state.close()


def test_ranges_subqueries_offsets_and_at_read_the_past(tmp_path: Path) -> None:
    assert names_of(tmp_path, "rate(a[5m]) > b", "c offset 1h > d", "e @ 100 > 0",
                    "max_over_time(f[10m:1m]) > g", "absent_over_time(h[1m])",
                    "timestamp(i) > 0") == {"a", "c", "e", "f", "h"}


def test_a_past_read_of_any_name_keeps_every_name(tmp_path: Path) -> None:
    assert names_of(tmp_path, 'rate({job="x"}[5m]) > 0') is None
    assert names_of(tmp_path, 'rate({__name__=~"pg_.+"}[5m]) > 0') is None
    # Read as an instant only: the newest points answer it.
    assert names_of(tmp_path, '{__name__=~"pg_.+"} > 0') == frozenset()


@pytest.mark.parametrize(("annotation", "expected"), [
    ('{{ query "rate(q[5m])" }}', {"a", "q"}),
    ('{{ range query (printf "sum(rate(q{target=%q}[1m]))" $labels.target) }}{{ end }}',
     {"a", "q"}),
    ('{{ with "q offset 1d" | query }}{{ end }}', {"a", "q"}),
    ('{{ query (printf "topk(3, q{target=%q})" $labels.target) }}', {"a"}),
    # What the query reads is not in the template: any name.
    ("{{ query $labels.query }}", None),
    ('{{ query (printf "rate(%s[5m])" $labels.name) }}', None),
    ('{{ query "rate(" }}', None),
])
def test_template_queries_are_readers_too(tmp_path: Path, annotation: str,
                                          expected: set[str] | None) -> None:
    assert names_of(tmp_path, "rate(a[1m]) > 0", annotation=annotation) == expected


def test_the_durable_history_records_from_memory(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("groups:\n  - name: g\n    rules:\n"
                    "      - alert: A\n        expr: x > 0\n")
    groups = load_rule_files([path])
    by_name = (LabelMatcher.of("__name__", MatchOp.EQUAL, "y"),)
    assert history_names(groups, [by_name]) == {"y"}
    assert history_names(groups, [(LabelMatcher.of("job", MatchOp.EQUAL, "z"),)]) is None


def reloaded_on_pg_up(tmp_path: Path) -> tuple[Path, Daemon]:
    """A daemon whose one rule reads pg_up as an instant, loaded: (its rule file, it)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups:\n  - name: g\n    rules:\n"
                     "      - alert: A\n        expr: pg_up == 0\n")
    daemon = daemon_with_rules(tmp_path, [str(rules)])
    assert daemon.rules is not None and daemon.reload_rules()
    return rules, daemon


def test_a_reload_that_starts_reading_a_range_keeps_history_from_then_on(
        tmp_path: Path) -> None:
    rules, daemon = reloaded_on_pg_up(tmp_path)
    try:
        store = daemon.store
        labels = labels_of(target="main")
        now = time.time()

        def publish(cycles: int) -> None:
            nonlocal now
            for _ in range(cycles):
                now += 2
                store.publish("main/pg", [Sample("pg_up", labels, 1, now)], now)

        publish(100)
        before = len(store.history("pg_up", labels))
        assert before < 60
        rules.write_text("groups:\n  - name: g\n    rules:\n"
                         "      - alert: A\n        expr: max_over_time(pg_up[10m]) == 0\n")
        assert daemon.reload_rules()
        publish(100)
        assert len(store.history("pg_up", labels)) >= 100
    finally:
        daemon.state.close()


def test_rules_a_reload_makes_read_a_past_not_kept_wait_for_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules, daemon = reloaded_on_pg_up(tmp_path)
    try:
        store, manager = daemon.store, daemon.rules
        assert manager is not None
        manager.resume(None)  # as the leader, once elected
        store.register([MetricSpec("jobs_total", MetricKind.COUNTER, "jobs")])
        now = time.time()
        at = now - 1800

        def publish_until(end: float) -> None:
            nonlocal at
            while at < end:
                at += 30
                apps = ["api"] + (["mail"] if at > now + 1000 else [])  # a new one, late
                store.publish("app", [Sample("jobs_total", labels_of(app=app), at, at)
                                      for app in apps], at)

        publish_until(now)  # half an hour of a series no rule reads over time
        rules.write_text("groups:\n  - name: g\n    rules:\n"
                         "      - alert: A\n        expr: pg_up == 0\n"
                         "      - alert: New\n        expr: jobs_total unless jobs_total "
                         "offset 15m\n")
        assert daemon.reload_rules()
        assert "rule 'New' of group 'g' reads 1200 s of history that memory did not keep" \
            in caplog.text
        # Memory kept a minute of it: evaluated now, the new rule would page for the series.
        assert manager.query("jobs_total unless jobs_total offset 15m", at) != []
        assert manager.evaluate_group("g", at) == []
        # Once its range is in memory it runs, and it is right: only the new series is new.
        publish_until(now + 1230)
        [event] = manager.evaluate_group("g", at)
        assert (event.rule, event.alert.label("app")) == ("New", "mail")
    finally:
        daemon.state.close()
