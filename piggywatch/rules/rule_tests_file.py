"""The rule unit-test file, in the format ``promtool test rules`` reads, as typed models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictFloat, ValidationError

from piggywatch.rules.loader import parse_prom_duration
from piggywatch.yamlpos import (
    YamlInputError,
    YamlSyntaxError,
    dotted,
    line_for,
    load_with_lines,
    read_yaml_file,
)

DEFAULT_EVALUATION_INTERVAL = 60.0


def _text(value: Any) -> Any:
    # Go's YAML decoder reads any scalar into a string field; so do we.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _seconds(value: Any) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_prom_duration(str(value))
    raise ValueError(f"expected a duration such as 1m or 1h30m, not {value!r}")


def _text_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(_text(k)): "" if v is None else _text(v) for k, v in value.items()}
    return value


Text = Annotated[str, BeforeValidator(_text)]
Duration = Annotated[float, BeforeValidator(_seconds)]
TextMap = Annotated[dict[str, str], BeforeValidator(_text_map)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSeries(_Model):
    """One ``input_series`` item: a series and its values in the expanding notation."""

    series: Text
    values: Text = ""


class ExpectedAlert(_Model):
    """One alert expected to be firing: its labels (besides alertname) and annotations."""

    exp_labels: TextMap | None = None
    exp_annotations: TextMap | None = None


class AlertTest(_Model):
    """``alert_rule_test`` item: the firing alerts of ``alertname`` at ``eval_time``."""

    eval_time: Duration = 0.0
    alertname: Text = ""
    exp_alerts: list[ExpectedAlert] | None = None


class ExpectedSample(_Model):
    """One expected sample of an instant query: a series descriptor and a value."""

    labels: Text = ""
    value: StrictFloat = 0.0


class ExpressionTest(_Model):
    """``promql_expr_test`` item: the instant query result of ``expr`` at ``eval_time``."""

    expr: Text = ""
    eval_time: Duration = 0.0
    exp_samples: list[ExpectedSample] | None = None


class RuleTestGroup(_Model):
    """One item of ``tests``: input series and the expectations checked against them."""

    interval: Duration | None = None
    input_series: list[InputSeries] | None = None
    alert_rule_test: list[AlertTest] | None = None
    promql_expr_test: list[ExpressionTest] | None = None
    external_labels: TextMap | None = None
    external_url: Text = ""
    name: Text = ""

    def max_eval_time(self) -> float:
        """The latest eval_time of any expectation (rules are evaluated up to it)."""
        times = [t.eval_time for t in self.alert_rule_test or ()]
        times += [t.eval_time for t in self.promql_expr_test or ()]
        return max(times, default=0.0)


class RuleTestFile(_Model):
    """A whole test file: the rule files under test and the test groups."""

    rule_files: list[Text] | None = None
    evaluation_interval: Duration | None = None
    group_eval_order: list[Text] | None = None
    tests: list[RuleTestGroup] | None = None

    def interval(self) -> float:
        """The evaluation interval; unset or zero means one minute, as in promtool."""
        return self.evaluation_interval or DEFAULT_EVALUATION_INTERVAL


class RuleTestFileError(Exception):
    """A test file that cannot be read; ``problems`` say where and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def read_test_file(path: Path) -> RuleTestFile:
    """Read and validate a test file, or raise RuleTestFileError naming each problem's line."""
    try:
        data, lines = load_with_lines(read_yaml_file(path))
    except OSError as exc:
        raise RuleTestFileError([f"{path}: cannot read: {exc.strerror}"]) from None
    except YamlSyntaxError as exc:
        # Not UTF-8, too large (YamlInputError says so), or not YAML.
        place = f"{path}:{exc.line}" if exc.line else str(path)
        what = exc.message if isinstance(exc, YamlInputError) else f"not valid YAML: {exc}"
        raise RuleTestFileError([f"{place}: {what}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RuleTestFileError([f"{path}: a test file is a mapping with rule_files and tests"])
    try:
        return RuleTestFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err["loc"])
            line = line_for(loc, lines)
            place = f"{path}:{line}" if line else str(path)
            problems.append(f"{place}: {dotted(loc)}: {_reason(err)}")
        raise RuleTestFileError(problems) from None


def _reason(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field {err['loc'][-1]!r}"
    if err["type"] == "missing":
        return f"field {err['loc'][-1]!r} is required"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")
