"""Custom SQL metrics: user-defined queries turned into gauges and counters (like sql_exporter).

Each configured query is its own collector, so a query that fails (a typo, a dropped table,
a timeout) is reported with its name and never holds back the other queries or the
built-in collectors of the same target.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from piggywatch.collectors.base import CollectorError, SourceContext, SourceJob
from piggywatch.collectors.postgres.target import PostgresTarget
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

_METRIC_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Label names the daemon sets itself; a query may not overwrite them.
_RESERVED_LABELS = frozenset({"target", "collector"})
# The alias of the wrapped query; unusual enough not to clash with the user's own names.
_ALIAS = "piggywatch_custom"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class CustomMetric(_Strict):
    """One metric read from one column of a custom query's rows."""

    name: str = Field(pattern=_METRIC_NAME)
    """Exported as ``<query name>_<name>``."""
    help: str = ""
    """The metric's HELP text."""
    kind: Literal["gauge", "counter"] = "gauge"
    """The metric type."""
    value_column: str = Field(min_length=1)
    """The column the value is read from."""


class CustomQueryConfig(_Strict):
    """A user-defined query; each row gives one sample per metric, labelled by label_columns.

    Either ``value_columns`` (each column becomes the gauge ``<name>_<column>``) or
    ``metrics`` (name, help, kind and column of each metric) says what to export.
    """

    name: str = Field(pattern=_METRIC_NAME)
    """The metric prefix, and the name used in error messages."""
    help: str = ""
    """The metric's HELP text."""
    target: str = Field(min_length=1)
    """The PostgreSQL target the query runs on (a target's name)."""
    interval: Duration = 60.0
    """How often it is sampled."""
    timeout: Duration = 10.0
    """The query's statement timeout and the bound of its whole cycle."""
    sql_text: str = Field(alias="sql", min_length=1)
    """The query: one SELECT statement."""
    value_columns: list[str] = []
    """Columns exported as gauges named `<name>_<column>`."""
    metrics: list[CustomMetric] = []
    """Metrics with their own name, help and kind."""
    label_columns: list[str] = []
    """Columns whose values label every sample."""

    @field_validator("sql_text")
    @classmethod
    def _one_select(cls, text: str) -> str:
        check_one_select(text)
        return text

    @model_validator(mode="after")
    def _columns_make_sense(self) -> CustomQueryConfig:
        if bool(self.value_columns) == bool(self.metrics):
            raise ValueError("give either value_columns or metrics (exactly one of them)")
        for column in self.label_columns:
            if not _LABEL_NAME.match(column):
                raise ValueError(f"label column {column!r} is not a valid label name; "
                                 "rename it in SQL with AS")
            if column in _RESERVED_LABELS:
                raise ValueError(f"label column {column!r} is set by PiggyWatch itself; "
                                 "rename it in SQL with AS")
        if len(set(self.label_columns)) != len(self.label_columns):
            raise ValueError("a label column is listed twice")
        for column in self.value_columns:
            if not re.match(_METRIC_NAME, column):
                raise ValueError(f"value column {column!r} cannot be part of a metric name; "
                                 "rename it in SQL with AS, or use metrics: with a name")
        names = [m.name for m in self.exported_metrics()]
        if len(set(names)) != len(names):
            raise ValueError("two metrics of this query have the same name")
        overlap = {m.value_column for m in self.exported_metrics()} & set(self.label_columns)
        if overlap:
            raise ValueError(f"column {sorted(overlap)[0]!r} is both a value and a label column")
        return self

    def exported_metrics(self) -> list[CustomMetric]:
        """The metrics of this query, with value_columns spelled out as gauges."""
        if self.metrics:
            return list(self.metrics)
        return [CustomMetric(name=c, help=self.help, value_column=c) for c in self.value_columns]


class CustomSqlCollector:
    """Runs one custom query on its target and exports the configured columns.

    The text was checked at load to be exactly one SELECT that writes nothing. It runs in
    a transaction begun READ ONLY, with the extended protocol (one statement only) and a
    statement timeout, here the query's own ``timeout``. It is wrapped as a subquery
    selecting only the configured columns, so a missing column is named by the database.
    """

    def __init__(self, target: PostgresTarget, query: CustomQueryConfig) -> None:
        self._target = target
        self._query = query
        self._metrics = query.exported_metrics()
        self._columns = [m.value_column for m in self._metrics] + list(query.label_columns)
        self._statement = _wrapped(query.sql_text, self._columns)
        self._specs = tuple(
            MetricSpec(f"{query.name}_{m.name}", MetricKind(m.kind),
                       m.help or query.help or f"Custom query {query.name}, column "
                       f"{m.value_column}")
            for m in self._metrics)

    @property
    def name(self) -> str:
        """``custom_sql:<query name>``, the ``collector`` label of this query's cycles."""
        return f"custom_sql:{self._query.name}"

    @property
    def interval(self) -> float:
        """Seconds between two runs of the query."""
        return self._query.interval

    def specs(self) -> Sequence[MetricSpec]:
        """One family per exported metric."""
        return self._specs

    def collect(self, now: float) -> list[Sample]:
        """Run the query once; raise CollectorError naming the query if it fails."""
        query_name = self._query.name
        try:
            with self._target.session(self._query.timeout) as db:
                rows = db.fetch(self._statement)
        except CollectorError as exc:
            raise CollectorError(exc.reason, f"custom query {query_name!r}: {exc}") from None
        n_values = len(self._metrics)
        out: list[Sample] = []
        for row in rows:
            labels = labels_of({column: _label_value(value) for column, value
                                in zip(self._query.label_columns, row[n_values:], strict=True)})
            for spec, metric, value in zip(self._specs, self._metrics, row[:n_values],
                                           strict=True):
                if value is None:
                    continue  # NULL: no observation, not zero
                out.append(Sample(spec.name, labels,
                                  _number(value, query_name, metric.value_column), now))
        return out


def custom_sql_collectors(target: PostgresTarget,
                          queries: Sequence[CustomQueryConfig]) -> list[CustomSqlCollector]:
    """The collectors of the custom queries bound to ``target`` (matched by its name)."""
    return [CustomSqlCollector(target, q) for q in queries if q.target == target.name]


# Nodes of statements that write, wherever they appear (a data-modifying WITH included).
_WRITES = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE",
           "MergeStmt": "MERGE"}


def check_one_select(text: str) -> None:
    """Raise ValueError unless ``text`` is exactly one SELECT that writes nothing.

    Parsed by PostgreSQL's own parser (libpg_query, through pglast), so quoting, dollar
    quoting, E'' strings and nested comments are read exactly as the server reads them.
    """
    from pglast import parser  # imported only where custom SQL is configured

    try:
        statements = json.loads(parser.parse_sql_json(text))["stmts"]
    except parser.ParseError as exc:
        message, offset = exc.args[0], exc.args[1]
        raise ValueError(f"is not valid SQL: {message} ({_where(text, offset)}); "
                         "custom SQL must be exactly one SELECT") from None
    if not statements:
        raise ValueError("holds no statement; write one SELECT")
    if len(statements) > 1:
        second = int(statements[1].get("stmt_location", 0))
        start = len(text.encode()[:second].decode(errors="ignore"))
        head = text[start:].strip().splitlines()[0][:40]
        raise ValueError(f"holds {len(statements)} statements (the second begins at "
                         f"{_where(text, second)}: {head!r}); custom SQL must be exactly "
                         "one SELECT: remove the others")
    [(kind, body)] = statements[0]["stmt"].items()
    if kind != "SelectStmt":
        name = _WRITES.get(kind) or re.sub(r"Stmt$", "", kind).upper()
        raise ValueError(f"is a {name} statement, not a SELECT; custom SQL is read-only")
    for key in _keys(body):
        if key in _WRITES:
            raise ValueError(f"holds a data-modifying {_WRITES[key]} (in a WITH clause); "
                             "custom SQL is read-only")
        if key == "intoClause":
            raise ValueError("is a SELECT INTO, which creates a table; custom SQL is "
                             "read-only: drop the INTO")
        if key == "lockingClause":
            raise ValueError("locks rows (FOR UPDATE / FOR SHARE); custom SQL is "
                             "read-only: drop the locking clause")


def _keys(node: Any) -> Iterator[str]:
    # Every node type and field name in a parse tree (as JSON).
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def _where(text: str, byte_offset: int) -> str:
    # The parser counts bytes of UTF-8; people count lines and characters.
    before = text.encode()[:byte_offset].decode(errors="ignore")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return f"line {line} of the query, column {column}"


def _wrapped(text: str, columns: Sequence[str]) -> sql.Composed:
    # Trailing semicolons would end the subquery early. The newline before the closing
    # parenthesis keeps a trailing "-- comment" from swallowing it.
    body = text.strip().rstrip(";").rstrip()
    return sql.SQL("SELECT {} FROM (\n{}\n) AS {}").format(
        # Unqualified on purpose: PostgreSQL reads alias.name of a missing column as the
        # function name(alias) (alias.count is count(*)), instead of reporting the column.
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        # The configuration's author writes this SQL; it is the point of the feature.
        sql.SQL(body),
        sql.Identifier(_ALIAS),
    )


def _number(value: Any, query: str, column: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | Decimal):
        return float(value)
    raise CollectorError(
        "query",
        f"custom query {query!r}: value column {column!r} is {type(value).__name__} "
        f"({str(value)[:40]!r}), not a number; cast it in SQL (e.g. {column}::float8) or "
        "list it under label_columns")


def _label_value(value: Any) -> str:
    if value is None:
        return ""  # Prometheus treats an empty label as an absent one
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


SPECS: tuple[MetricSpec, ...] = ()  # every family is the user's (CustomQueryConfig.metrics)


def build(queries: list[CustomQueryConfig], context: SourceContext) -> list[SourceJob]:
    """One collector per query, on its target."""
    return [(context.targets[q.target].name, context.targets[q.target],
             CustomSqlCollector(context.targets[q.target], q), q.interval) for q in queries]
