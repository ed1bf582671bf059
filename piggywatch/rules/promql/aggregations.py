"""Aggregation operators (``sum by (job) (...)``, ``topk(3, ...)``) over an instant vector."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
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


def _reducers(param: float) -> dict[str, Callable[[list[float]], float]]:
    return {
        "sum": _sum,
        "avg": floats.incremental_mean,
        "count": lambda values: float(len(values)),
        "min": floats.smallest,
        "max": floats.largest,
        "quantile": lambda values: floats.quantile(param, values),
    }


def aggregate(
    op: str,
    vector: Samples,
    grouping: Sequence[str],
    without: bool,
    param: float = math.nan,
) -> Samples:
    """Evaluate aggregation ``op`` (``param`` is topk/bottomk's k or quantile's q)."""
    key = grouping_key(grouping, without)
    if op in ("topk", "bottomk"):
        return _select_k(op == "topk", vector, key, param)
    reducer = _reducers(param)[op]
    groups = _group_values(vector, key)
    return [(labels, reducer(values)) for labels, values in groups.items()]


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
