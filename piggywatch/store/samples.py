"""What a collector produces: metric descriptions and samples."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

# Sorted (name, value) pairs: hashable and cheap to compare, so a series key is just
# (metric name, labels).
Labels = tuple[tuple[str, str], ...]


# Half an emoji: what a JSON "\\ud83d" escape (an edge function's log line, a probe's answer)
# gives Python, and what UTF-8, the exposition, SQLite and every channel cannot encode.
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_value(value: str) -> str:
    """``value`` with every lone surrogate as U+FFFD: text that UTF-8 can encode."""
    return value if value.isascii() or not _SURROGATE.search(value) else _SURROGATE.sub(
        "\ufffd", value)


def text_labels(labels: Labels) -> Labels:
    """``labels``, each value as ``text_value`` makes it (the same object when none changes),
    so that one odd value reaches neither the exposition nor an alert's delivery."""
    if all(value.isascii() or not _SURROGATE.search(value) for _, value in labels):
        return labels
    return tuple((name, text_value(value)) for name, value in labels)


def labels_of(mapping: Mapping[str, str] | None = None, **extra: str) -> Labels:
    """Build a canonical label tuple from a mapping and/or keyword arguments."""
    merged = dict(mapping or {})
    merged.update(extra)
    return tuple(sorted(merged.items()))


class MetricKind(StrEnum):
    """How a metric's value behaves over time."""

    COUNTER = "counter"
    GAUGE = "gauge"
    # Exposed as "untyped", for families postgres_exporter itself exposes so (pg_static).
    UNTYPED = "untyped"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric family's name, kind and HELP text, declared by the collector that owns it."""

    name: str
    kind: MetricKind
    help: str


class Sample(NamedTuple):
    """One observation of one series.

    A named tuple rather than a frozen dataclass: collectors build tens of thousands a cycle,
    and a tuple is built in a third of the time.
    """

    name: str
    labels: Labels
    value: float
    timestamp: float


class Changes(NamedTuple):
    """A source's new snapshot, told as what changed since its previous one.

    ``changed``: the series that are new or whose value differs (a sample each);
    ``removed``: (name, labels) of the series the previous snapshot had and this one lacks.
    Every other series of the previous snapshot carries on with the same value. A source of
    thousands of series of which a few change each cycle (pg_stat_statements at top_k 5000)
    then costs the store work for those few, not for all.
    """

    changed: list[Sample]
    removed: list[tuple[str, Labels]]
