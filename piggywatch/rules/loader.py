"""Rule files in the Prometheus format: loading, validation, and problems with their place."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from piggywatch.config_types import MAX_DURATION_SECONDS, MAX_DURATION_TEXT
from piggywatch.rules.promql.parse import (
    Expr,
    ExpressionSyntaxError,
    UnsupportedExpression,
    lookback_window,
    parse_expr,
)
from piggywatch.rules.templating import TemplateError, check_template
from piggywatch.yamlpos import (
    FileProblem,
    FileProblems,
    KeyPath,
    YamlSyntaxError,
    dotted,
    line_for,
    load_with_lines,
    read_yaml_file,
)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


def parse_prom_duration(text: str) -> float:
    """A Prometheus duration (``90s``, ``1h30m``, ``7d``, ``0s``) in seconds.

    Read as Prometheus reads rule and test files: a unit is required (``5`` is refused)
    and zero is allowed (``for: 0s``); longer than MAX_DURATION_SECONDS is refused, as
    nothing could be scheduled that far ahead.
    """
    found = _DURATION.match(text)
    if text == "0":
        return 0.0
    if not text or found is None:
        raise ValueError(f"not a valid duration string: {text!r}")
    ms = sum(int(part) * unit for part, unit in zip(found.groups(), _DURATION_UNITS_MS,
                                                     strict=True) if part)
    if ms / 1000 > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} is too long: at most {MAX_DURATION_TEXT}")
    return ms / 1000


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record: str | None = None
    alert: str | None = None
    expr: str | int | float
    # Kept as text here: validated below so the message can name the rule.
    for_: str | None = None
    keep_firing_for: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML turns `threshold: 80` into an int; Prometheus reads every value as a string.
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value


class _GroupModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    interval: str | None = None
    limit: int | None = None
    rules: list[dict[str, Any]] = []


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: list[dict[str, Any]] = []


RuleProblem = FileProblem


class RuleFileError(FileProblems):
    """Rule files that cannot be used; ``problems`` lists every reason."""


@dataclass(frozen=True)
class AlertingRule:
    """``alert:`` rule, parsed and validated."""

    name: str
    expr_text: str
    expr: Expr
    hold: float
    keep_firing_for: float
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    file: str
    line: int | None


@dataclass(frozen=True)
class RecordingRule:
    """``record:`` rule, parsed and validated."""

    name: str
    expr_text: str
    expr: Expr
    labels: Mapping[str, str]
    file: str
    line: int | None


Rule = AlertingRule | RecordingRule


@dataclass(frozen=True)
class RuleGroup:
    """A named group of rules evaluated together, in order, at one interval."""

    name: str
    file: str
    interval: float | None
    limit: int
    rules: tuple[Rule, ...] = field(default=())

    def lookback(self) -> float:
        """The longest history any rule of the group needs, in seconds."""
        return max((lookback_window(r.expr) for r in self.rules), default=0.0)


def expand_globs(patterns: Iterable[str], base: Path) -> list[Path]:
    """Rule files named by ``patterns`` (relative to ``base``), sorted, without duplicates."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        for name in sorted(glob.glob(full)):
            found.setdefault(str(Path(name).resolve()), Path(name))
    return list(found.values())


def unmatched_patterns(patterns: Iterable[str], base: Path) -> list[str]:
    """The ``rule_files`` patterns that match no file now."""
    return [p for p in patterns if not expand_globs([p], base)]


def load_rule_files(paths: Iterable[Path]) -> list[RuleGroup]:
    """Load every file, or raise RuleFileError listing every problem in all of them
    (including a group name used in two files: they would share alert state)."""
    groups: list[RuleGroup] = []
    problems: list[RuleProblem] = []
    for path in paths:
        try:
            text = read_yaml_file(path)
        except OSError as exc:
            problems.append(RuleProblem(str(path), None, "", f"cannot read: {exc.strerror}"))
            continue
        except YamlSyntaxError as exc:
            problems.append(RuleProblem(str(path), exc.line, "", exc.message))
            continue
        file_groups, file_problems = parse_rule_file(text, str(path))
        groups.extend(file_groups)
        problems.extend(file_problems)
    names = [g.name for g in groups]
    for name in sorted({n for n in names if names.count(n) > 1}):
        files = sorted({g.file for g in groups if g.name == name})
        if len(files) > 1:  # twice in one file is that file's own problem, reported above
            problems.append(RuleProblem(files[-1], None, f"group {name!r}",
                                        f"group name also used in {files[0]}"))
    if problems:
        raise RuleFileError(problems)
    return groups


def parse_rule_file(text: str, file: str) -> tuple[list[RuleGroup], list[RuleProblem]]:
    """Parse one file's text; returns its groups and its problems (both may be non-empty)."""
    try:
        data, lines = load_with_lines(text)
    except YamlSyntaxError as exc:
        return [], [RuleProblem(file, exc.line, "", exc.message)]
    problems: list[RuleProblem] = []

    def problem(path: KeyPath, where: str, reason: str) -> None:
        problems.append(RuleProblem(file, line_for(path, lines), where, reason))

    if data is None:
        return [], []
    try:
        top = _FileModel.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            problem(tuple(err["loc"]), dotted(tuple(err["loc"])), _reason(err))
        return [], problems
    groups: list[RuleGroup] = []
    seen: set[str] = set()
    for gi, raw_group in enumerate(top.groups):
        gpath: KeyPath = ("groups", gi)
        try:
            group = _GroupModel.model_validate(raw_group)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                loc = (*gpath, *err["loc"])
                problem(loc, f"group {raw_group.get('name', gi)!r}", _reason(err))
            continue
        where_group = f"group {group.name!r}"
        if not group.name:
            problem(gpath, f"group #{gi + 1}", "group name must not be empty")
        if group.name in seen:
            problem((*gpath, "name"), where_group, "group name is used twice in this file")
        seen.add(group.name)
        interval = None
        if group.interval is not None:
            try:
                interval = parse_prom_duration(group.interval)
            except ValueError as exc:
                problem((*gpath, "interval"), where_group, f"interval: {exc}")
        rules: list[Rule] = []
        for ri, raw_rule in enumerate(group.rules):
            rpath: KeyPath = (*gpath, "rules", ri)
            rule = _parse_rule(raw_rule, rpath, where_group, file, lines, problem)
            if rule is not None:
                rules.append(rule)
        groups.append(RuleGroup(group.name, file, interval, group.limit or 0, tuple(rules)))
    return groups, problems


def _parse_rule(raw: dict[str, Any], rpath: KeyPath, where_group: str, file: str,
                lines: dict[KeyPath, int], problem: Any) -> Rule | None:
    data = dict(raw)
    if "for" in data:
        data["for_"] = data.pop("for")
    name = data.get("alert") or data.get("record") or f"#{rpath[-1]}"
    where = f"{where_group}, rule {name!r}"
    try:
        model = _RuleModel.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple("for" if p == "for_" else p for p in err["loc"])
            problem((*rpath, *loc), where, _reason(err))
        return None
    ok = True
    if bool(model.alert) == bool(model.record):
        problem(rpath, where, "a rule needs exactly one of 'alert' and 'record'")
        return None
    try:
        expr = parse_expr(str(model.expr))
    except (ExpressionSyntaxError, UnsupportedExpression) as exc:
        problem((*rpath, "expr"), where, f"expr: {exc}")
        ok = False
    for key, value in (model.labels or {}).items():
        if not _LABEL_NAME.match(key):
            problem((*rpath, "labels", key), where, f"invalid label name {key!r}")
            ok = False
        ok &= _template_ok(value, (*rpath, "labels", key), where, problem)
    if model.record is not None:
        if not _METRIC_NAME.match(model.record):
            problem((*rpath, "record"), where, f"invalid recording rule name {model.record!r}")
            ok = False
        for key in ("for_", "keep_firing_for", "annotations"):
            if getattr(model, key) is not None:
                shown = key.rstrip("_")
                problem((*rpath, shown), where, f"'{shown}' is only for alerting rules")
                ok = False
        if not ok:
            return None
        return RecordingRule(model.record, str(model.expr), expr, model.labels or {}, file,
                             line_for(rpath, lines))
    hold = keep = 0.0
    for key, shown in (("for_", "for"), ("keep_firing_for", "keep_firing_for")):
        text = getattr(model, key)
        if text is None:
            continue
        try:
            seconds = parse_prom_duration(text)
        except ValueError as exc:
            problem((*rpath, shown), where, f"{shown}: {exc}")
            ok = False
            continue
        if key == "for_":
            hold = seconds
        else:
            keep = seconds
    for key, value in (model.annotations or {}).items():
        ok &= _template_ok(value, (*rpath, "annotations", key), where, problem)
    if not ok:
        return None
    assert model.alert is not None
    return AlertingRule(model.alert, str(model.expr), expr, hold, keep, model.labels or {},
                        model.annotations or {}, file, line_for(rpath, lines))


def _template_ok(text: str, path: KeyPath, where: str, problem: Any) -> bool:
    try:
        check_template(text)
    except TemplateError as exc:
        problem(path, where, f"{path[-2]} {path[-1]!r}: template: {exc}")
        return False
    return True


def _reason(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown field {err['loc'][-1]!r}"
    if err["type"] == "missing":
        return f"field {err['loc'][-1]!r} is required"
    return str(err["msg"])
