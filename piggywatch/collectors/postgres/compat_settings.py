"""pg_settings_*: every numeric and boolean server setting, as postgres_exporter names them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from piggywatch.store import MetricKind, MetricSpec

# Settings whose unit is a time become ``_seconds``, those whose unit is a size ``_bytes``;
# -1 ("disabled", "unlimited") is kept as it is, as postgres_exporter keeps it.
_TO_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TO_BYTES = {"B": 1.0, "kB": 2.0**10, "MB": 2.0**20, "GB": 2.0**30, "TB": 2.0**40,
             "1kB": 2.0**10, "2kB": 2.0**11, "4kB": 2.0**12, "8kB": 2.0**13,
             "16kB": 2.0**14, "32kB": 2.0**15, "64kB": 2.0**16, "16MB": 2.0**24,
             "32MB": 2.0**25, "64MB": 2.0**26}
# Azure's and Cloud SQL's own settings whose values do not parse (upstream skips them too).
_SKIPPED = ("sync_commit_cancel_wait", "google_dataplex.max_messages")

QUERY = (
    "SELECT name, setting, COALESCE(unit, ''), vartype FROM pg_catalog.pg_settings "
    "WHERE vartype IN ('bool', 'integer', 'real') AND name <> ALL(%s::text[])"
)


@dataclass(frozen=True, slots=True)
class SettingValue:
    """One setting as a metric: its family name, HELP text and value."""

    metric: str
    help: str
    value: float


def setting_value(name: str, setting: str, unit: str, vartype: str) -> SettingValue | None:
    """The metric for one row of pg_settings, or None when its value or unit is unusable."""
    metric = "pg_settings_" + name.replace(".", "_").replace("-", "_")
    help_text = f"Server Parameter: {name}"
    if vartype == "bool":
        return SettingValue(metric, help_text, 1.0 if setting == "on" else 0.0)
    try:
        value = float(setting)
    except ValueError:
        return None
    if unit in _TO_SECONDS:
        suffix, factor = "seconds", _TO_SECONDS[unit]
    elif unit in _TO_BYTES:
        suffix, factor = "bytes", _TO_BYTES[unit]
    elif unit == "":
        return SettingValue(metric, help_text, value)
    else:
        return None
    return SettingValue(f"{metric}_{suffix}",
                        f"{help_text} [Units converted to {suffix}.]",
                        value if value == -1 else value * factor)


def query_params(skip: Iterable[str]) -> tuple[list[str]]:
    """The parameters of QUERY: settings left out (upstream's, and those exported elsewhere)."""
    return ([*_SKIPPED, *skip],)


def spec_of(found: SettingValue) -> MetricSpec:
    """The family of one setting (a gauge, as upstream types them)."""
    return MetricSpec(found.metric, MetricKind.GAUGE, found.help)
