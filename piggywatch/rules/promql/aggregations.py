"""Aggregation operators (``sum by (job) (...)``, ``topk(3, ...)``) over an instant vector.

Each operator is a function ``(vector, grouping, without, param) -> vector``; the registry
(``registry.AGGREGATIONS``) maps names to them and says which parameter each takes.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import reduce
from operator import add

from piggywatch.rules.promql import floats
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.values import METRIC_NAME, Sample, Samples
from piggywatch.store.samples import Labels

_INT64_LIMIT = 2.0**63


def grouping_key(grouping: Sequence[str], without: bool) -> Callable[[Labels], Labels]:
    """The labels a sample keeps in its group: only ``by`` labels, or all but ``without`` ones
    (and never the metric name)."""
    if without:
        dropped = frozenset(grouping) | {METRIC_NAME}
        return lambda labels: tuple([pair for pair in labels if pair[0] not in dropped])
    kept = frozenset(grouping)
    if not kept:
        return lambda labels: ()
    return lambda labels: tuple([pair for pair in labels if pair[0] in kept])


def _group_values(vector: Samples, key: Callable[[Labels], Labels]) -> dict[Labels, list[float]]:
    groups: dict[Labels, list[float]] = {}
    for labels, value in vector:
        group_labels = key(labels)
        values = groups.get(group_labels)
        if values is None:
            groups[group_labels] = [value]
        else:
            values.append(value)
    return groups


def _sum(values: list[float]) -> float:
    # Left to right, no compensation: Prometheus 2.x's sum (and not Python 3.12's sum()).
    return reduce(add, values)


def _stdvar(values: list[float]) -> float:
    # Welford's online variance, as Prometheus 2.x's stddev/stdvar aggregation (uncompensated).
    mean = values[0]
    count = 1.0
    aux = 0.0
    for v in values[1:]:
        count += 1
        delta = v - mean
        mean += delta / count
        aux += delta * (v - mean)
    return aux / count


Aggregation = Callable[[Samples, Sequence[str], bool, "float | str"], Samples]


def reducing(reducer: Callable[[list[float]], float]) -> Aggregation:
    """An aggregation that reduces each group's values to one number."""

    def aggregate(
        vector: Samples, grouping: Sequence[str], without: bool, param: float | str
    ) -> Samples:
        groups = _group_values(vector, grouping_key(grouping, without))
        return [(labels, reducer(values)) for labels, values in groups.items()]

    return aggregate


def _number(param: float | str) -> float:
    assert isinstance(param, float), param  # the parser makes sure
    return param


sum_ = reducing(_sum)
avg = reducing(floats.incremental_mean)
count = reducing(lambda values: float(len(values)))
group = reducing(lambda values: 1.0)
min_ = reducing(floats.smallest)
max_ = reducing(floats.largest)
stdvar = reducing(_stdvar)
stddev = reducing(lambda values: floats.sqrt(_stdvar(values)))


def quantile(
    vector: Samples, grouping: Sequence[str], without: bool, param: float | str
) -> Samples:
    """The ``param``-quantile of each group."""
    q = _number(param)
    return reducing(lambda values: floats.quantile(q, values))(vector, grouping, without, q)


def topk(vector: Samples, grouping: Sequence[str], without: bool, param: float | str) -> Samples:
    """The ``param`` largest samples of each group, with their own labels."""
    return _select_k(True, vector, grouping_key(grouping, without), _number(param))


def bottomk(vector: Samples, grouping: Sequence[str], without: bool, param: float | str) -> Samples:
    """The ``param`` smallest samples of each group, with their own labels."""
    return _select_k(False, vector, grouping_key(grouping, without), _number(param))


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def count_values(
    vector: Samples, grouping: Sequence[str], without: bool, param: float | str
) -> Samples:
    """How many samples of each group have each value; the value goes into label ``param``."""
    label = str(param)
    if not _LABEL_NAME.fullmatch(label):
        raise EvaluationError(f"invalid label name {label!r}")
    if not without:
        grouping = (*grouping, label)
    key = grouping_key(grouping, without)
    counts: dict[Labels, float] = {}
    for labels, value in vector:
        kept = [pair for pair in labels if pair[0] != label]
        kept.append((label, format_value(value)))
        kept.sort()
        group_labels = key(tuple(kept))
        counts[group_labels] = counts.get(group_labels, 0.0) + 1.0
    return list(counts.items())


def format_value(v: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: the shortest digits, never an exponent."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = format(Decimal(repr(v)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _select_k(
    largest: bool, vector: Samples, key: Callable[[Labels], Labels], param: float
) -> Samples:
    if param != param or abs(param) >= _INT64_LIMIT:
        raise EvaluationError(f"Scalar value {param} overflows int64 (the k of topk/bottomk)")
    k = int(param)
    if k < 1:
        return []
    groups: dict[Labels, list[Sample]] = {}
    for sample in vector:
        group_labels = key(sample[0])
        members = groups.get(group_labels)
        if members is None:
            groups[group_labels] = [sample]
        else:
            members.append(sample)
    # NaN ranks last for both topk and bottomk, as in Prometheus; the samples keep their
    # own labels, biggest (or smallest) first.
    sign = -1.0 if largest else 1.0

    def rank(sample: Sample) -> tuple[bool, float]:
        value = sample[1]
        return value != value, sign * value

    out: Samples = []
    for members in groups.values():
        out.extend(heapq.nsmallest(k, members, key=rank))
    return out
