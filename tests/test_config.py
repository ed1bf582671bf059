"""The configuration file: typo safety, interpolation, overrides, and where problems are."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piggywatch.config_file import ConfigError, load_settings, parse_settings
from piggywatch.config_types import MAX_DURATION_SECONDS, parse_duration

GOOD = """\
server:
  listen: 127.0.0.1:9790
targets:
  - name: main
    dsn: ${DATABASE_URL}
    collectors:
      statements: {interval: 30s, top_k: 50}
      tables: {interval: 5m}
"""
SECRET_DSN = "postgresql://app:s3cr3t-Pa55word@127.0.0.1:5432/app"


def check(tmp_path: Path, text: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "piggywatch.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "piggywatch", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_good_config_loads_with_defaults_and_interpolation() -> None:
    settings = parse_settings(GOOD, "f.yaml", {"DATABASE_URL": SECRET_DSN})
    target = settings.targets[0]
    assert target.dsn.get_secret_value() == SECRET_DSN
    assert target.collectors.statements.top_k == 50
    assert target.collectors.tables.interval == 300
    assert target.collectors.connections.interval == 15  # default
    assert SECRET_DSN not in repr(settings)


def test_misspelt_key_fails_check_naming_key_line_and_suggestion(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD.replace("top_k: 50", "topk: 50"), {"DATABASE_URL": SECRET_DSN})
    assert result.returncode == 1
    assert "piggywatch.yaml:7:" in result.stderr
    assert "targets[0].collectors.statements.topk" in result.stderr
    assert "did you mean 'top_k'?" in result.stderr


def test_every_problem_is_listed_and_no_secret_is_printed(tmp_path: Path) -> None:
    text = GOOD.replace("interval: 5m", "interval: soon").replace("server:", "sever:")
    result = check(tmp_path, text, {"DATABASE_URL": SECRET_DSN})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert any(":1: sever: unknown key 'sever'; did you mean 'server'?" in ln for ln in lines)
    assert any(":8: targets[0].collectors.tables.interval:" in ln for ln in lines)
    assert "s3cr3t" not in result.stderr + result.stdout


def test_good_config_passes_check_with_one_line_summary(tmp_path: Path) -> None:
    result = check(tmp_path, GOOD, {"DATABASE_URL": SECRET_DSN})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(
        "OK (1 targets, 4 collectors, 0 rules in 0 rule files)")


def test_unset_variable_is_named_with_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(GOOD, "f.yaml", {})
    assert "f.yaml:5: targets[0].dsn: environment variable DATABASE_URL is not set" \
        in str(info.value)


def test_default_value_and_dollar_escape() -> None:
    text = GOOD.replace("${DATABASE_URL}", "${DATABASE_URL:-postgresql://localhost/x}$$")
    settings = parse_settings(text, "f.yaml", {})
    assert settings.targets[0].dsn.get_secret_value() == "postgresql://localhost/x$"


def test_piggywatch_variables_override_nested_keys() -> None:
    env = {"DATABASE_URL": SECRET_DSN,
           "PIGGYWATCH_SERVER__LISTEN": "0.0.0.0:9999",
           "PIGGYWATCH_TARGETS__0__COLLECTORS__STATEMENTS__TOP_K": "7",
           "PIGGYWATCH_LOGGING__LEVEL": "DEBUG",
           # Not a top-level key: left for ${...} interpolation, not an error.
           "PIGGYWATCH_API_TOKEN": "x"}
    settings = parse_settings(GOOD, "f.yaml", env)
    assert settings.server.listen == "0.0.0.0:9999"
    assert settings.targets[0].collectors.statements.top_k == 7
    assert settings.logging.level == "DEBUG"


def test_duplicate_target_names_are_rejected() -> None:
    text = GOOD + "  - name: main\n    dsn: postgresql://localhost/other\n"
    with pytest.raises(ConfigError, match="target name 'main' is used twice"):
        parse_settings(text, "f.yaml", {"DATABASE_URL": SECRET_DSN})


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert f"{path}:3: not valid YAML" in str(info.value)


@given(st.integers(min_value=1, max_value=10**6),
       st.sampled_from([("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_durations_parse_to_seconds(amount: int, unit: tuple[str, float]) -> None:
    if amount * unit[1] > MAX_DURATION_SECONDS:
        with pytest.raises(ValueError, match="at most 3650d"):
            parse_duration(f"{amount}{unit[0]}")
    else:
        assert parse_duration(f"{amount}{unit[0]}") == pytest.approx(amount * unit[1])


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, "99999999999w"])
def test_durations_that_nothing_could_wait_for_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"finite|at most"):
        parse_duration(value)


@given(st.text().filter(lambda s: not re.match(r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$", s)))
def test_non_durations_are_rejected_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match="write it like 30s"):
        parse_duration(text)


def test_shipped_example_and_demo_configs_are_valid() -> None:
    env = {"DATABASE_URL": SECRET_DSN, "PIGGYWATCH_DEMO_DSN": SECRET_DSN,
           "PIGGYWATCH_DEMO_RULES": "rules", "PIGGYWATCH_DEMO_STATE": "/tmp/state.db",
           "PIGGYWATCH_DEMO_API_TOKEN": "demo-token-0123456789",
           "PD_ROUTING_KEY": "R0UTING", "SLACK_BOT_TOKEN": "xoxb-1", "SMTP_PASSWORD": "pw"}
    example = load_settings(Path(__file__).parent.parent / "examples" / "piggywatch.yaml", env)
    assert example.sentry.dsn.get_secret_value() == ""
    # The handbook's routing: severities to their escalations, low in business hours only.
    assert example.route is not None
    by_severity = {r.matchers[0]: r for r in example.route.routes}
    assert by_severity['severity="critical"'].escalation == "outage"
    assert by_severity['severity="high"'].escalation == "degradation"
    assert by_severity['severity="low"'].active_time_intervals == ["business-hours"]
    assert [s.notify for s in example.escalations["degradation"]] == [
        ["oncall-pagerduty", "oncall-slack"], ["leads-email"]]
    demo = Path(__file__).parent.parent / "piggywatch" / "demo" / "piggywatch.yaml"
    assert load_settings(demo, env).targets[0].name == "piggybong"


def test_delivery_problems_are_reported_each_at_its_line() -> None:
    text = GOOD + """\
receivers:
  - name: oncall-slack
    slack: {webhook_url: "https://hooks.example.com/x"}
route:
  escalation: degradaton
escalations:
  degradation:
    - notify: [oncall-slack]
    - notify: [leads-email]
"""
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "f.yaml", {"DATABASE_URL": SECRET_DSN})
    assert sorted(str(p) for p in info.value.problems) == [
        "f.yaml:13: route.escalation: there is no escalation named 'degradaton'; did you "
        "mean 'degradation'?",
        "f.yaml:16: escalations.degradation[0].wait: a step followed by another needs a "
        "wait (how long before the next level)",
        "f.yaml:17: escalations.degradation[1].notify[0]: there is no receiver named "
        "'leads-email'; known: oncall-slack",
    ]


def test_example_config_passes_check_with_its_rule_files() -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": SECRET_DSN,
           "PIGGYWATCH_API_TOKEN": "example-token-0123456789",
           "PD_ROUTING_KEY": "a" * 32, "SLACK_BOT_TOKEN": "xoxb-1", "SMTP_PASSWORD": "p"}
    example = Path(__file__).parent.parent / "examples" / "piggywatch.yaml"
    result = subprocess.run([sys.executable, "-m", "piggywatch", "check", "--config",
                             str(example)], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    shipped = len(list((Path(__file__).parent.parent / "rules").glob("*.yaml")))
    assert f"rules in {shipped} rule files)" in result.stdout


def test_problems_inside_sections_whose_models_load_lazily_name_their_line_and_key() -> None:
    # The sources' and alerting sections' models are imported only when a configuration has
    # them (config_lazy); their problems read as they did when they were imported up front.
    text = GOOD + """\
sources:
  growth:
    - target: main
      users_tabel: public.users
  probes:
    - name: api
      url: "http://127.0.0.1:1/healthz"
      interval: soon
  system_memory: {intervall: 10s}
  edge_functions: 5
receivers:
  - name: oncall-slack
    slack: {webhook_ur: "https://hooks.example.com/x"}
route:
  receiver: oncall-slack
  group_wait: never
inhibit_rules:
  - equal: 3
time_intervals:
  - name: business-hours
    times: [{start_time: "25:00", end_time: "17:00"}]
"""
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "f.yaml", {"DATABASE_URL": SECRET_DSN})
    assert [str(p) for p in info.value.problems] == [
        "f.yaml:18: sources.edge_functions: Input should be a valid dictionary or instance "
        "of EdgeFunctionsConfig",
        "f.yaml:12: sources.growth[0].users_tabel: unknown key 'users_tabel'; did you mean "
        "'users_table'?",
        "f.yaml:16: sources.probes[0].interval: 'soon' is not a duration; write it like 30s, "
        "5m or 1h",
        "f.yaml:17: sources.system_memory.intervall: unknown key 'intervall'; did you mean "
        "'interval'?",
        "f.yaml:21: receivers[0].slack.webhook_ur: unknown key 'webhook_ur'; did you mean "
        "'webhook_url'?",
        "f.yaml:24: route.group_wait: 'never' is not a duration; write it like 30s, 5m or 1h",
        "f.yaml:26: inhibit_rules[0].source_matchers: required key 'source_matchers' is "
        "missing",
        "f.yaml:26: inhibit_rules[0].target_matchers: required key 'target_matchers' is "
        "missing",
        "f.yaml:26: inhibit_rules[0].equal: Input should be a valid list",
        "f.yaml:29: time_intervals[0].times[0].start_time: String should match pattern "
        "'^([01]\\d|2[0-3]):[0-5]\\d$'",
    ]


def test_a_postgres_only_config_loads_without_the_sources_and_alerting_models() -> None:
    # A fresh interpreter: this one has imported them all by now.
    probe = ("import sys; from piggywatch.config_file import parse_settings; "
             f"parse_settings({GOOD!r}, 'f.yaml', {{'DATABASE_URL': {SECRET_DSN!r}}}); "
             "print(sorted(m for m in sys.modules if m.startswith(('piggywatch.alerting', "
             "'piggywatch.collectors.'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
