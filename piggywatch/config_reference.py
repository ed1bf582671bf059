"""The configuration reference (docs/configuration.md), generated from the settings model.

Every key's type and default come from the pydantic models; its meaning from the field's
``description``, else the comment written above (or beside) the field in the model's
source, else the short notes below. A test compares the committed file with ``render()``,
so the reference cannot drift from the model. Regenerate it with::

    python -m piggywatch.config_reference > docs/configuration.md
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from piggywatch.config import Settings
from piggywatch.config_types import parse_duration

__all__ = ["Row", "Section", "leaf_paths", "nested_model", "render", "sections"]

# Meanings of fields whose model says nothing about them, by "Model.field" or by field
# name alone (for names that mean the same everywhere).
_NOTES: dict[str, str] = {
    "enabled": "Whether this runs at all.",
    "interval": "How often it is sampled.",
    "timeout": "How long one attempt may take before it counts as failed.",
    "top_n": "How many of the largest items are exported (the rest are summed).",
    "target": "The name of the PostgreSQL target (`targets[].name`) it reads from.",
    "url": "The URL requests go to.",
    "name": "Its name; unique among its kind.",
    "help": "The metric's HELP text.",
    "table": "The table, `schema.table` or `table`.",
    "created_at_column": "The column holding when the row was created.",
    "last_sign_in_column": "The column holding the user's last sign-in time.",
    "Settings.targets": "The PostgreSQL databases to monitor (at least one).",
    "Settings.server": "Where the daemon listens, and who may call it.",
    "Settings.sources": "App telemetry besides the PostgreSQL collectors.",
    "Settings.rule_files": "Prometheus-style rule files (globs allowed), relative to the "
                           "config file's directory.",
    "Settings.evaluation_interval": "How often alerting and recording rules are evaluated.",
    "Settings.no_data": "What alerting rules do when their data is missing.",
    "Settings.external_url": "The URL PiggyWatch is reached at, for links in notifications.",
    "Settings.external_labels": "Labels added to every alert sent out.",
    "Settings.receivers": "Where notifications go: one channel per receiver.",
    "Settings.route": "The routing tree deciding which receiver (or escalation) gets an "
                      "alert.",
    "Settings.escalations": "Named escalation policies: steps notified in turn until "
                            "someone acknowledges.",
    "Settings.inhibit_rules": "Alerts that mute other alerts while they fire.",
    "Settings.time_intervals": "Named time windows for routes' active and mute intervals.",
    "Settings.sentry": "Where the daemon's own errors go.",
    "Settings.logging": "Log level and format.",
    "TargetConfig.dsn": "The libpq connection string or URI (a secret; use ${VARIABLE}).",
    "TargetConfig.connect_timeout": "How long connecting may take.",
    "TargetConfig.collectors": "The PostgreSQL collectors of this target.",
    "BasicAuth.username": "The user name.",
    "BasicAuth.password": "The password.",
    "TlsConfig.cert_file": "Path of the PEM certificate, with its chain.",
    "TlsConfig.key_file": "Path of the PEM private key.",
    "StatementsOptions.top_k": "How many statements (by total time) are exported.",
    "SentryConfig.dsn": "The Sentry DSN; empty sends nothing.",
    "SentryConfig.environment": "The Sentry environment tag.",
    "LoggingConfig.level": "The lowest level logged.",
    "LoggingConfig.format": "`json`, `text`, or `auto` (JSON unless stderr is a terminal).",
    "NoDataConfig.default": "The policy of every rule group not named in `groups`.",
    "NoDataConfig.groups": "Per rule group overrides: group name to policy.",
    "SourcesConfig.edge_functions": "Edge-function invocations, errors and latency.",
    "SourcesConfig.growth": "Growth and business metrics, one entry per target.",
    "SourcesConfig.cost": "Cost and budget, one entry per target.",
    "SourcesConfig.custom_sql": "User-defined queries exported as metrics.",
    "SourcesConfig.redis": "Redis instances to watch.",
    "SourcesConfig.probes": "HTTP smoke tests.",
    "SourcesConfig.system_memory": "Memory of the container or host.",
    "Receiver.name": "The name routes and escalations refer to.",
    "Receiver.send_resolved": "Whether resolved notifications are sent too.",
    "Receiver.pagerduty": "Send to PagerDuty (Events API v2).",
    "Receiver.slack": "Send to Slack.",
    "Receiver.email": "Send email over SMTP.",
    "Receiver.webhook": "POST Alertmanager's webhook JSON to a URL.",
    "Receiver.alertmanager": "Forward to an existing Alertmanager (POST /api/v2/alerts).",
    "PagerDutyReceiver.routing_key": "The integration's routing key (a secret).",
    "PagerDutyReceiver.url": "The Events API v2 enqueue URL.",
    "PagerDutyReceiver.source": "The event's `source` field.",
    "PagerDutyReceiver.client": "The event's `client` field.",
    "SlackReceiver.token": "A bot token (`xoxb-...`), used with `channel`.",
    "SlackReceiver.channel": "The channel the bot posts to, used with `token`.",
    "SlackReceiver.webhook_url": "An incoming webhook URL, instead of token and channel.",
    "SlackReceiver.base_url": "The Slack Web API base URL.",
    "EmailReceiver.to": "Recipients.",
    "EmailReceiver.from_": "The sender address.",
    "EmailReceiver.smarthost": "The SMTP server, `host:port`.",
    "EmailReceiver.tls": "`starttls`, `tls` (implicit TLS) or `none`.",
    "EmailReceiver.username": "SMTP user name; unset: no authentication.",
    "EmailReceiver.password": "SMTP password.",
    "WebhookReceiver.url": "The URL the JSON is POSTed to (a secret: it may hold a token).",
    "WebhookReceiver.max_alerts": "The most alerts in one payload; 0: all.",
    "AlertmanagerReceiver.url": "The Alertmanager's base URL (a path prefix is allowed).",
    "Route.receiver": "The receiver notified for alerts this route matches.",
    "Route.escalation": "The escalation policy followed instead of a single receiver.",
    "Route.matchers": 'Alertmanager matchers the alert must all satisfy, e.g. '
                      '`severity=~"high|critical"`.',
    "Route.group_by": "Labels alerts are grouped by into one notification; `...`: every "
                      "label. Unset: inherited from the parent.",
    "Route.group_wait": "How long a new group waits for more alerts before the first "
                        "notification (0s: at once).",
    "Route.group_interval": "How long to wait before notifying about changes to a group.",
    "Route.repeat_interval": "How long before a still-firing group is notified again.",
    "Route.continue_": "Whether matching continues with the next sibling route.",
    "Route.active_time_intervals": "Time intervals (by name) outside which it is muted.",
    "Route.mute_time_intervals": "Time intervals (by name) during which it is muted.",
    "Route.routes": "Child routes, tried in order; same keys as `route`.",
    "EscalationStep.notify": "The receivers notified at this step.",
    "EscalationStep.wait": "How long without an acknowledgement before the next step.",
    "EscalationStep.repeat": "How many more times this step repeats before moving on.",
    "InhibitRule.source_matchers": "Matchers of the alerts that mute.",
    "InhibitRule.target_matchers": "Matchers of the alerts that are muted.",
    "InhibitRule.equal": "Labels whose values must be equal in source and target.",
    "TimeRange.start_time": "Start, `HH:MM` (inclusive).",
    "TimeRange.end_time": "End, `HH:MM` (exclusive; `24:00` allowed).",
    "TimeInterval.time_zone": "The IANA time zone the times are in.",
    "TimeInterval.weekdays": "Days of the week or ranges, e.g. `monday:friday`.",
    "TimeInterval.times": "Times of day.",
    "TimeInterval.days_of_month": "Days of the month or ranges; negative counts from the end.",
    "TimeInterval.months": "Months or ranges, by name or number.",
    "ServerConfig.listen": "The `host:port` the HTTP server (metrics, health, API) binds.",
    "EdgeFunctionsConfig.buckets": "Histogram bucket bounds of the duration, in seconds.",
    "EdgeSqlSourceConfig.function_column": "The column holding the function's name.",
    "EdgeSqlSourceConfig.duration_column": "The column holding the invocation's duration.",
    "EdgeSqlSourceConfig.duration_unit": "The unit of the duration column.",
    "EdgeSqlSourceConfig.status_column": "The column holding the HTTP status code.",
    "EdgeHttpSourceConfig.base_url": "The Supabase Management API base URL.",
    "EdgeHttpSourceConfig.project_ref": "The Supabase project's reference id.",
    "EdgeHttpSourceConfig.access_token": "A Supabase personal access token (a secret).",
    "EdgeHttpSourceConfig.page_size": "Rows per API request.",
    "GrowthConfig.users_table": "The table of users, `schema.table` or `table`.",
    "GrowthConfig.retention_cohort": "The age of the cohort whose retention is measured.",
    "GrowthConfig.paid_plans": "Values of `plan_column` that count as paid.",
    "PurchasesTable.user_column": "The column holding the buyer's user id.",
    "PurchasesTable.amount_column": "The column holding the amount.",
    "PurchasesTable.currency": "The currency summed when `currency_column` is set.",
    "CostConfig.monthly_budget_dollars": "The monthly budget the projection is compared to.",
    "CostConfig.growth_window": "The window disk growth is measured over for the "
                                "projection.",
    "CostModel.plan_dollars_per_month": "The plan's monthly price.",
    "CostModel.disk_included_gb": "Disk included in the plan.",
    "CostModel.disk_dollars_per_gb_month": "Price of disk beyond the included size.",
    "CostModel.file_storage_included_gb": "File storage included in the plan.",
    "CostModel.file_storage_dollars_per_gb_month": "Price of file storage beyond it.",
    "CostModel.egress_included_gb": "Egress included per month.",
    "CostModel.egress_dollars_per_gb": "Price of egress beyond it.",
    "CostModel.invocations_included": "Edge-function invocations included per month.",
    "CostModel.invocations_dollars_per_million": "Price per million invocations beyond them.",
    "CostModel.mau_included": "Monthly active users included.",
    "CostModel.mau_dollars_each": "Price of each monthly active user beyond them.",
    "AssumedUsage.file_storage_gb": "File storage used, as an estimate.",
    "AssumedUsage.egress_gb_per_month": "Egress per month, as an estimate.",
    "CustomQueryConfig.sql_text": "The query: one SELECT statement.",
    "CustomQueryConfig.value_columns": "Columns exported as gauges named "
                                       "`<name>_<column>`.",
    "CustomQueryConfig.label_columns": "Columns whose values label every sample.",
    "CustomQueryConfig.metrics": "Metrics with their own name, help and kind.",
    "CustomMetric.kind": "The metric type.",
    "CustomMetric.value_column": "The column the value is read from.",
    "ProbeConfig.method": "The HTTP method.",
    "ProbeConfig.body": "The request body.",
    "ProbeConfig.expected_status": "Status codes that pass.",
    "ProbeConfig.body_contains": "Text the response body must contain.",
    "ProbeConfig.follow_redirects": "Whether redirects are followed.",
    "ProbeConfig.json_path": "A value the JSON response must hold.",
    "JsonCheck.path": "Dotted path into the JSON document, e.g. `data.0.status`.",
    "JsonCheck.equals": "The value expected there.",
}

@dataclass(frozen=True)
class Row:
    """One key of a section."""

    path: str
    type: str
    default: str
    meaning: str


@dataclass(frozen=True)
class Section:
    """One model's keys, at the path where the model sits in the file."""

    path: str
    title: str
    doc: str
    rows: tuple[Row, ...]


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m piggywatch.config_reference > docs/configuration.md`;",
        "     do not edit by hand: tests/test_config_reference.py checks it. -->",
        "",
        "PiggyWatch reads one YAML file (`piggywatch run --config FILE`). Unknown keys are",
        "errors. Any value may use `${VARIABLE}` or `${VARIABLE:-default}` from the",
        "environment (`$$` is a literal `$`), and `PIGGYWATCH_SECTION__KEY=value` variables",
        "override keys (`__` separates levels; list items by index). Durations are written",
        "`250ms`, `30s`, `5m`, `1h`, `1d`, `1w` or a number of seconds.",
        "",
        "`[]` in a path stands for every item of a list, `<name>` for every key of a map.",
        "",
    ]
    for section in sections():
        out += [f"## `{section.title}`", ""]
        if section.doc:
            out += [section.doc, ""]
        out += ["| Key | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{r.path}` | {r.type} | {r.default} | {_cell(r.meaning)} |"
                for r in section.rows]
        out.append("")
    return "\n".join(out)


def sections() -> list[Section]:
    """Every model section of the settings, depth first in file order."""
    found: list[Section] = []
    _walk(Settings, "", found, ())
    return found


def leaf_paths() -> list[str]:
    """The path of every key in the reference (the rows of every section)."""
    return [row.path for section in sections() for row in section.rows]


def _walk(model: type[BaseModel], path: str, found: list[Section],
          seen: tuple[type[BaseModel], ...]) -> None:
    rows: list[Row] = []
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        child_path = f"{path}.{key}" if path else key
        sub, suffix = nested_model(field.annotation)
        rows.append(Row(child_path, _type_of(field), _default_of(field),
                        _meaning(model, name, field)))
        if sub is not None and sub not in seen and sub is not model:
            nested.append((sub, child_path + suffix))
    title = path or "top level"
    found.append(Section(path, title, _first_paragraph(model.__doc__), tuple(rows)))
    for sub, sub_path in nested:
        _walk(sub, sub_path, found, (*seen, model))


def nested_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside ``annotation`` and the path suffix reaching it (``[]``, ``.<name>``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return nested_model(args[0])
    if origin in (Union, types.UnionType):
        for arg in args:
            sub, suffix = nested_model(arg)
            if sub is not None:
                return sub, suffix
    if origin in (list, tuple) and args:
        sub, suffix = nested_model(args[0])
        return sub, "[]" + suffix
    if origin is dict and len(args) == 2:
        sub, suffix = nested_model(args[1])
        return sub, ".<name>" + suffix
    return None, ""


def _type_of(field: FieldInfo) -> str:
    text = _describe(field.annotation, field.metadata)
    bounds = [f"{symbol} {_number(getattr(m, attr))}" for m in field.metadata
              for cls, attr, symbol in _BOUNDS if isinstance(m, cls)]
    bounds += [f"at least {m.min_length} item(s)" for m in field.metadata
               if isinstance(m, annotated_types.MinLen) and _is_list(field.annotation)]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


_BOUNDS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "≤"))


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple)


def _describe(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    validators = [m for m in metadata if isinstance(m, BeforeValidator)]
    if validators:
        func = validators[0].func
        return "duration" if func is parse_duration else "duration (0s allowed)"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _describe(args[0], tuple(args[1:]))
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        text = " or ".join(_describe(a) for a in present)
        return text + ", optional" if len(present) < len(args) else text
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is tuple:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"map of {_describe(args[0])} to {_describe(args[1])}"
    if annotation is SecretStr:
        return "secret string"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    if "JsonValue" in repr(annotation):
        return "any JSON value"
    return str(annotation)


def _default_of(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return "(section defaults)"
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        return '`""`' if not default.get_secret_value() else "(secret)"
    if _describe(field.annotation, field.metadata).startswith("duration") and isinstance(
            default, int | float):
        return f"`{_duration(float(default))}`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f'`"{default}"`' if default == "" else f"`{default}`"
    if isinstance(default, int | float):
        return f"`{_number(default)}`"
    if isinstance(default, list | tuple | dict) and not default:
        return "`{}`" if isinstance(default, dict) else "`[]`"
    if isinstance(default, list | tuple):
        return "`[" + ", ".join(_number(v) if isinstance(v, int | float) else str(v)
                                for v in default) + "]`"
    return f"`{default}`"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{int(seconds * 1000)}ms" if (seconds * 1000).is_integer() else f"{seconds}s"


def _meaning(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if field.description:
        return _sentence(field.description)
    owner = next((c for c in model.__mro__ if name in getattr(c, "__annotations__", {})), model)
    above, inline = _field_comments(owner).get(name, ("", ""))
    nested, _ = nested_model(field.annotation)
    for text in (above, _NOTES.get(f"{owner.__name__}.{name}", ""), inline,
                 _first_paragraph(nested.__doc__) if nested is not None else "",
                 _NOTES.get(name, "")):
        if text:
            return _sentence(text)
    return ""


@cache
def _field_comments(owner: type) -> dict[str, tuple[str, str]]:
    """The comment lines above and the comment beside each field in the class's source."""
    try:
        source = inspect.getsource(owner)
    except (OSError, TypeError):
        return {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    beside = {t.start[0]: t.string[1:].strip() for t in tokens
              if t.type == tokenize.COMMENT and t.line.strip()[:1] != "#"}
    field_line = re.compile(r"^    ([A-Za-z_][A-Za-z0-9_]*)\s*:")
    comments: dict[str, tuple[str, str]] = {}
    above: list[str] = []
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped[1:].strip())
            continue
        match = field_line.match(line)
        if match:
            comments[match.group(1)] = (" ".join(above), beside.get(number, ""))
        above = []
    return comments


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    text = text[0].upper() + text[1:] if text else text
    return text if text.endswith((".", ")", "?", "!")) else text + "."


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


if __name__ == "__main__":
    print(render(), end="")
