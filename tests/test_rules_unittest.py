"""`piggywatch rules test` agrees with `promtool test rules` (Prometheus 2.42) case by case."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piggywatch.rules.rule_tests import run_test_file
from piggywatch.rules.rule_tests_format import format_duration, format_go_duration, format_value
from piggywatch.rules.series_notation import NotationError, expand_values, parse_series
from piggywatch.store.series import is_stale

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
# The shipped rules' tests, and those of the rule file written the way postgres_exporter's
# mixin writes rules (group, timestamp, sum by (job, instance, server), $labels.instance).
PASSING = sorted((RULES / "tests").glob("*.yaml")) + sorted(
    (ROOT / "examples" / "compat" / "tests").glob("*.yaml"))
FAILING = sorted((RULES / "tests" / "failing").glob("*.yaml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH")

# Which case each deliberately failing file must fail on, and only that one.
FAILING_CASES = {
    "not_firing_yet.yaml": {("alert", "PostgresTargetDown", "2m")},
    "wrong_annotation.yaml": {("alert", "PostgresConnectionsHigh", "5m")},
    "wrong_expr_value.yaml": {("expr", '"rate(pg_stat_statements_seconds_total[10m]) / '
                                       'rate(pg_stat_statements_calls_total[10m])"', "15m")},
    "wrong_label.yaml": {("alert", "PostgresTargetDown", "3m")},
}

_CASE = re.compile(
    r"^    (?:alertname: (?P<alert>.+?), time: (?P<alert_time>\S+?),"
    r"|expr: (?P<expr>\".*\"), time: (?P<expr_time>[^,\s]+)"
    r"|rule: (?P<rule>\S+), time: (?P<rule_time>\S+?), err:)", re.MULTILINE)


def failed_cases(report: str) -> set[tuple[str, str, str]]:
    """The (kind, alertname / expr / rule, eval time) of every failure in a report."""
    found = set()
    for match in _CASE.finditer(report):
        if match["alert"]:
            found.add(("alert", match["alert"], match["alert_time"]))
        elif match["expr"]:
            found.add(("expr", match["expr"], match["expr_time"]))
        else:
            found.add(("rule", match["rule"], match["rule_time"]))
    return found


def piggywatch_test(path: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "piggywatch", "rules", "test", str(path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def promtool_test(path: Path) -> tuple[int, str]:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def without_differences(report: str) -> str:
    """A report with PiggyWatch's extra "differences:" blocks and blank lines removed."""
    kept: list[str] = []
    skipping = False
    for line in report.splitlines():
        if line.strip() == "differences:":
            skipping = True
            continue
        if skipping and line.startswith(" " * 12):
            continue
        skipping = False
        if line.strip():
            kept.append(line)
    return "\n".join(kept)


# --- the shipped rule tests ---------------------------------------------------------------


def test_every_alert_group_has_a_test_file() -> None:
    assert {p.name for p in PASSING} >= {"availability.yaml", "connections.yaml",
                                         "performance.yaml", "capacity.yaml"}
    assert len(FAILING) >= 3


@pytest.mark.parametrize("path", PASSING, ids=lambda p: p.name)
def test_shipped_rule_tests_pass(path: Path) -> None:
    code, report = piggywatch_test(path)
    assert code == 0, report
    assert "SUCCESS" in report


@pytest.mark.parametrize("path", FAILING, ids=lambda p: p.name)
def test_deliberately_wrong_tests_fail_on_their_case(path: Path) -> None:
    code, report = piggywatch_test(path)
    assert code == 1, report
    assert failed_cases(report) == FAILING_CASES[path.name], report
    assert "differences:" in report


@needs_promtool
@pytest.mark.parametrize("path", PASSING + FAILING, ids=lambda p: p.parent.name + "/" + p.name)
def test_piggywatch_and_promtool_agree(path: Path) -> None:
    ours_code, ours = piggywatch_test(path)
    theirs_code, theirs = promtool_test(path)
    assert ours_code == theirs_code, f"piggywatch:\n{ours}\npromtool:\n{theirs}"
    assert failed_cases(ours) == failed_cases(theirs), f"piggywatch:\n{ours}\npromtool:\n{theirs}"


@needs_promtool
@pytest.mark.parametrize("path", sorted(RULES.glob("*.yaml")), ids=lambda p: p.name)
def test_promtool_accepts_shipped_rule_file(path: Path) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_not_firing_yet_says_the_alert_is_pending() -> None:
    report = run_test_file(RULES / "tests" / "failing" / "not_firing_yet.yaml")
    [failure] = report.failures
    assert ("is pending, not firing: active since 2m and 'for' is 1m, so it fires at 3m"
            in failure.text)


def test_wrong_label_names_the_label() -> None:
    report = run_test_file(RULES / "tests" / "failing" / "wrong_label.yaml")
    [failure] = report.failures
    assert 'label severity: expected "high", got "critical"' in failure.text


# --- the semantics promtool has, checked on small rule files --------------------------------

SEMANTICS_RULES = """
groups:
  - name: second
    rules:
      - record: doubled
        expr: recorded * 2
      - alert: Flapping
        expr: m > 0
        for: 2m
        keep_firing_for: 3m
        labels: {severity: "{{ if gt $value 2.0 }}high{{ end }}", v: "{{ $value }}"}
        annotations:
          text: "{{ $labels.i }} at {{ $value | humanize }} ({{ $externalLabels.site }})"
          url: "{{ $externalURL }}"
      - alert: ScalarResult   # Prometheus reads a scalar as one sample without labels
        expr: scalar(sum(m))
        annotations: {v: "{{ $value }}"}
  - name: first
    rules:
      - record: recorded
        expr: sum by (i) (m)
"""

# Every expectation is wrong, so both tools print everything they got. (ALERTS of i="a" are
# left out: where a label template expands to "", Prometheus drops the label from the alert
# but writes the unexpanded template into ALERTS; PiggyWatch leaves it out of both.)
SEMANTICS_ALERT_TIMES = ("0m", "1m", "2m", "3m", "4m30s", "5m", "6m", "7m", "8m", "9m", "10m")
SEMANTICS_QUERIES = (
    ('ALERTS{i!="a"}', "3m"), ('ALERTS_FOR_STATE{i!="a"}', "6m"), ("doubled", "4m"),
    ("recorded", "9m"), ("m", "150s"), ("m offset 1m", "3m"), ("n", "5m"), ("n", "6m"),
    ("time()", "2m"), ('"text"', "1m"),
)
SEMANTICS_TEST = """
rule_files: [rules.yaml]
evaluation_interval: 1m
group_eval_order: [first, second]
tests:
  - name: semantics
    interval: 30s
    external_labels: {site: eu1}
    external_url: https://piggywatch.example
    input_series:
      - series: 'm{i="a"}'
        values: '1x11 0x20'
      - series: 'm{i="b"}'
        values: '_ _ 2.5 _ 3e3 stale 5x14 _x3 1'
      - series: 'n'
        values: '0.1+0.1x10 Inf -Inf NaN'
    alert_rule_test:
""" + "".join(f"      - {{eval_time: {t}, alertname: {a}, exp_alerts: [{{}}]}}\n"
              for t in SEMANTICS_ALERT_TIMES for a in ("Flapping", "ScalarResult")) + """
    promql_expr_test:
""" + "".join(f"      - {{expr: '{e}', eval_time: {t}, exp_samples: [{{labels: x, value: -1}}]}}\n"
              for e, t in SEMANTICS_QUERIES)


@needs_promtool
def test_alert_states_templates_and_recording_agree_with_promtool(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(SEMANTICS_RULES)
    test_file = tmp_path / "test.yaml"
    test_file.write_text(SEMANTICS_TEST)
    ours_code, ours = piggywatch_test(test_file)
    theirs_code, theirs = promtool_test(test_file)
    assert ours_code == theirs_code == 1
    assert without_differences(ours) == without_differences(theirs)


def test_group_without_interval_spaces_points_by_evaluation_interval(tmp_path: Path) -> None:
    # promtool 2.42 puts every point at 0 here (prometheus/prometheus#12871, fixed
    # later by #13011); PiggyWatch does what promtool documents.
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    test_file = tmp_path / "test.yaml"
    test_file.write_text(textwrap.dedent("""
        rule_files: [rules.yaml]
        evaluation_interval: 30s
        tests:
          - input_series: [{series: m, values: '0+1x10'}]
            promql_expr_test:
              - {expr: m, eval_time: 2m, exp_samples: [{labels: m, value: 4}]}
    """))
    assert run_test_file(test_file).ok


def test_rule_evaluation_error_is_reported_at_its_step(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent("""
        groups:
          - name: g
            rules:
              - alert: Clash
                expr: m > 0
                labels: {i: same}
    """))
    test_file = tmp_path / "test.yaml"
    test_file.write_text(textwrap.dedent("""
        rule_files: [rules.yaml]
        tests:
          - interval: 1m
            input_series:
              - {series: 'm{i="a"}', values: '0 0 1'}
              - {series: 'm{i="b"}', values: '0 0 1'}
            alert_rule_test: [{eval_time: 3m, alertname: Clash}]
    """))
    report = run_test_file(test_file)
    assert [(f.text.split(", err:")[0]) for f in report.failures] == [
        "    rule: Clash, time: 2m0s"]



def test_a_test_file_that_is_not_utf8_is_a_failure_naming_its_line(tmp_path: Path) -> None:
    test_file = tmp_path / "test.yaml"
    data = b"rule_files: [rules.yaml]\n# caf\xe9, saved as Latin-1\ntests: []\n"
    test_file.write_bytes(data)
    report = run_test_file(test_file)
    assert [f.text for f in report.failures] == [
        f"{test_file}:2: not UTF-8: byte 0xe9 at byte offset {data.index(0xE9)} cannot be "
        "decoded; save the file as UTF-8"]


# --- the series notation -------------------------------------------------------------------

small_ints = st.integers(min_value=-10**6, max_value=10**6)
counts = st.integers(min_value=0, max_value=200)


@given(start=small_ints, step=st.integers(min_value=0, max_value=10**6), n=counts,
       sign=st.sampled_from("+-"))
def test_integer_steps_expand_to_n_plus_one_values(start: int, step: int, n: int,
                                                   sign: str) -> None:
    values = expand_values(f"{start}{sign}{step}x{n}")
    direction = 1 if sign == "+" else -1
    assert values == [float(start + direction * step * k) for k in range(n + 1)]


@given(start=st.floats(-1e6, 1e6, allow_nan=False), step=st.floats(0, 1e3, allow_nan=False),
       n=st.integers(min_value=0, max_value=50))
def test_float_steps_are_added_one_at_a_time(start: float, step: float, n: int) -> None:
    values = expand_values(f"{start!r}+{step!r}x{n}")
    assert len(values) == n + 1
    expected = start
    for value in values:
        assert value == expected
        expected += step


@given(value=small_ints, n=counts)
def test_repeat_shorthand_gives_n_plus_one_copies(value: int, n: int) -> None:
    assert expand_values(f"{value}x{n}") == [float(value)] * (n + 1)


@given(n=counts)
def test_missing_run_gives_n_gaps(n: int) -> None:
    assert expand_values(f"1 _x{n} 2") == [1.0, *([None] * n), 2.0]


def test_special_values() -> None:
    values = expand_values("stale Inf -Inf +inf NaN 1e3 -1.5e-1 .5 5. _")
    assert values[0] is not None and is_stale(values[0])
    assert values[1:4] == [math.inf, -math.inf, math.inf]
    assert values[4] is not None and math.isnan(values[4]) and not is_stale(values[4])
    assert values[5:] == [1000.0, -0.15, 0.5, 5.0, None]
    # "0x10" is 0 repeated, not hexadecimal; a stale start steps into plain NaN.
    assert expand_values("0x10") == [0.0] * 11
    after_stale = expand_values("stale+1x1")[1]
    assert after_stale is not None and math.isnan(after_stale) and not is_stale(after_stale)


REJECTED = ["0x1f", "1_000", "1+-1x2", "1x-1", "stale x2", "stalex2", "1 x 2", "1+1 x2",
            "1+1x 2", "1x2.5", "1e", "+stale", "foo", "1x0x1", "_x", "1,2", "1+1", "0X10",
            "sum", "1x1e1", "_x1x2"]


@pytest.mark.parametrize("text", REJECTED)
def test_notation_errors(text: str) -> None:
    with pytest.raises(NotationError):
        expand_values(text)


def _notation_samples() -> list[str]:
    fixed = ["1x3 _x2 2", "0.1+0.1x10", "1+1x2 5-2x2", "-1-1x1 +4", "1e1x2", "1+1e1x1",
             "Inf+1x1", "_x0 1x0 2", "inf nan INF", " 1 2  3 ", "stale+1x2", "00x3", "1+1x010",
             "1.5e1+2.5e-1x2", "Inf-1x1 -Inf+2x1", "stale 3 _ stale"]
    rng = random.Random(42)
    generated = []
    for _ in range(30):
        items = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["plain", "step", "repeat", "blank", "blanks", "stale"])
            a = rng.choice([str(rng.randint(-50, 50)), f"{rng.uniform(-5, 5):.3f}",
                            f"{rng.randint(1, 9)}e{rng.randint(-3, 3)}"])
            b = rng.choice([str(rng.randint(0, 20)), f"{rng.uniform(0, 2):.2f}"])
            n = rng.randint(0, 4)
            items.append({"plain": a, "step": f"{a}{rng.choice('+-')}{b}x{n}",
                          "repeat": f"{a}x{n}", "blank": "_", "blanks": f"_x{n}",
                          "stale": "stale"}[kind])
        generated.append(" ".join(items))
    return fixed + generated


def _yaml_float(value: float) -> str:
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


@needs_promtool
def test_notation_expands_as_promtool_does(tmp_path: Path) -> None:
    # Our expansion becomes the expectation of a promtool test: promtool must pass it.
    lines = ["rule_files: []", "tests:"]
    for text in _notation_samples():
        values = expand_values(text)
        lines += ["  - interval: 1m", "    input_series:",
                  f"      - {{series: m, values: '{text}'}}", "    promql_expr_test:"]
        for i, value in enumerate([*values, None]):
            at = f"timestamp(m) == {i * 60}"
            if value is None or is_stale(value):
                lines.append(f"      - {{expr: 'm and {at}', eval_time: {i}m, exp_samples: []}}")
            elif math.isnan(value):
                lines.append(f"      - {{expr: 'count(m != m and {at})', eval_time: {i}m, "
                             "exp_samples: [{labels: '{}', value: 1}]}")
            else:
                lines.append(f"      - {{expr: 'm and {at}', eval_time: {i}m, "
                             f"exp_samples: [{{labels: m, value: {_yaml_float(value)}}}]}}")
    test_file = tmp_path / "notation.yaml"
    test_file.write_text("\n".join(lines) + "\n")
    code, report = promtool_test(test_file)
    assert code == 0, report


@needs_promtool
@pytest.mark.parametrize("text", REJECTED)
def test_promtool_rejects_the_same_notation(tmp_path: Path, text: str) -> None:
    test_file = tmp_path / "bad.yaml"
    test_file.write_text(f"rule_files: []\ntests:\n  - interval: 1m\n"
                         f"    input_series: [{{series: m, values: '{text}'}}]\n")
    code, _ = promtool_test(test_file)
    assert code == 1


def test_series_descriptor() -> None:
    assert parse_series('m{b="2", a="1"}') == (("__name__", "m"), ("a", "1"), ("b", "2"))
    assert parse_series('{__name__="m"}') == (("__name__", "m"),)
    assert parse_series("{}") == () == parse_series("")
    with pytest.raises(NotationError, match="only label="):
        parse_series('m{a=~"x"}')


# --- promtool's way of printing --------------------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (3.0, "3E+00"), (0.15, "1.5E-01"), (-0.15, "-1.5E-01"), (0.30000000000000004,
    "3.0000000000000004E-01"), (1e100, "1E+100"), (0.0, "0E+00"), (1234.5, "1.2345E+03"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (5e-324, "5E-324"),
])
def test_values_print_like_go(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(("seconds", "model", "go"), [
    (0, "0s", "0s"), (90, "1m30s", "1m30s"), (60, "1m", "1m0s"), (90000, "1d1h", "25h0m0s"),
    (604800, "1w", "168h0m0s"), (0.5, "500ms", "500ms"), (1209601, "14d1s", "336h0m1s"),
])
def test_durations_print_like_prometheus(seconds: float, model: str, go: str) -> None:
    assert format_duration(seconds) == model
    assert format_go_duration(seconds) == go
