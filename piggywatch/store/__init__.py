"""The series model and the in-memory store: the only place samples live."""

from piggywatch.store.memory import MemoryStore, SeriesPoint
from piggywatch.store.samples import (
    Changes,
    Labels,
    MetricKind,
    MetricSpec,
    Sample,
    labels_of,
    text_labels,
    text_value,
)

__all__ = [
    "Changes",
    "Labels",
    "MemoryStore",
    "MetricKind",
    "MetricSpec",
    "Sample",
    "SeriesPoint",
    "labels_of",
    "text_labels",
    "text_value",
]
