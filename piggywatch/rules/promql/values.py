"""What an expression evaluates to, and the label bookkeeping every operation shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.store.samples import Labels

METRIC_NAME = "__name__"


class VectorSample(NamedTuple):
    """One element of an instant vector: sorted labels (with ``__name__`` where kept), value."""

    labels: Labels
    value: float


Vector: TypeAlias = list[VectorSample]

# Inside the evaluator a vector is a list of plain (labels, value) tuples: building one costs
# a fifth of building a VectorSample, and intermediate vectors hold every selected series.
Sample: TypeAlias = tuple[Labels, float]
Samples: TypeAlias = list[Sample]


@dataclass(frozen=True, slots=True)
class Scalar:
    """A single number with no labels (``time()``, ``scalar(v)``, ``1 + 2``)."""

    value: float


@dataclass(frozen=True, slots=True)
class String:
    """A string literal evaluated on its own."""

    value: str


Value: TypeAlias = Samples | Scalar | String


def to_vector(samples: Samples) -> Vector:
    """The public form of an internal vector."""
    return [VectorSample(labels, value) for labels, value in samples]


def drop_name(labels: Labels) -> Labels:
    """``labels`` without ``__name__``, as Prometheus returns from arithmetic and functions."""
    if labels and labels[0][0] == METRIC_NAME:  # where sorting puts it, bar uppercase labels
        return labels[1:]
    for name, _ in labels:
        if name == METRIC_NAME:
            return tuple([pair for pair in labels if pair[0] != METRIC_NAME])
    return labels


def with_label(labels: Labels, name: str, value: str) -> Labels:
    """``labels`` with ``name`` set to ``value``; an empty value removes the label."""
    kept = [pair for pair in labels if pair[0] != name]
    if value:
        kept.append((name, value))
        kept.sort()
    return tuple(kept)


def label_value(labels: Labels, name: str) -> str:
    """The value of ``name``, or ``""`` when absent (Prometheus does not tell them apart)."""
    for key, value in labels:
        if key == name:
            return value
    return ""


def format_labels(labels: Labels) -> str:
    """``{a="1", b="2"}``, as Prometheus prints a label set in its error messages."""
    inner = ", ".join(f'{name}="{value}"' for name, value in labels)
    return "{" + inner + "}"


def ensure_unique(vector: Samples, where: str) -> Samples:
    """Reject a result holding two samples with the same labels, as Prometheus does."""
    if len(vector) > 1 and len({labels for labels, _ in vector}) != len(vector):
        raise EvaluationError(f"vector cannot contain metrics with the same labelset (in {where})")
    return vector
