"""Binary operators: arithmetic, comparisons and set operators, with Prometheus vector matching."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

from piggywatch.rules.promql import floats
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.nodes import Cardinality, VectorMatching
from piggywatch.rules.promql.values import (
    METRIC_NAME,
    Sample,
    Samples,
    Scalar,
    drop_name,
    ensure_unique,
    format_labels,
    with_label,
)
from piggywatch.store.samples import Labels

ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": floats.div,
    "%": floats.mod,
    "^": floats.power,
    "atan2": math.atan2,
}
# Prometheus 2.x drops the metric name after these (and after `bool` comparisons), but not
# after atan2.
_DROPS_NAME = frozenset({"+", "-", "*", "/", "%", "^"})

COMPARISON: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def scalar_binop(op: str, lhs: float, rhs: float) -> Scalar:
    """``scalar op scalar``; a comparison (which must use ``bool``) gives 1 or 0."""
    if op in COMPARISON:
        return Scalar(1.0 if COMPARISON[op](lhs, rhs) else 0.0)
    return Scalar(ARITHMETIC[op](lhs, rhs))


def vector_scalar_binop(
    op: str, vector: Samples, scalar: float, *, scalar_on_left: bool, return_bool: bool, where: str
) -> Samples:
    """``vector op scalar`` or ``scalar op vector``.

    A comparison without ``bool`` filters and keeps the vector's value and metric name;
    arithmetic and ``bool`` comparisons drop the name.
    """
    out: Samples
    compare = COMPARISON.get(op)
    if compare is None:
        arith = ARITHMETIC[op]
        if op not in _DROPS_NAME:
            if scalar_on_left:
                return [(labels, arith(scalar, v)) for labels, v in vector]
            return [(labels, arith(v, scalar)) for labels, v in vector]
        if scalar_on_left:
            out = [(drop_name(labels), arith(scalar, v)) for labels, v in vector]
        else:
            out = [(drop_name(labels), arith(v, scalar)) for labels, v in vector]
        return ensure_unique(out, where)
    if return_bool:
        if scalar_on_left:
            out = [(drop_name(labels), float(compare(scalar, v))) for labels, v in vector]
        else:
            out = [(drop_name(labels), float(compare(v, scalar))) for labels, v in vector]
        return ensure_unique(out, where)
    if scalar_on_left:
        return [sample for sample in vector if compare(scalar, sample[1])]
    return [sample for sample in vector if compare(sample[1], scalar)]


def signature(matching: VectorMatching) -> Callable[[Labels], Labels]:
    """The labels two samples must share to match: the ``on`` labels, or all but the
    ``ignoring`` ones and the metric name."""
    if matching.on:
        kept = frozenset(matching.labels)
        return lambda labels: tuple([pair for pair in labels if pair[0] in kept])
    if not matching.labels:
        return drop_name  # the default, ignoring(): by far the most common
    dropped = frozenset(matching.labels) | {METRIC_NAME}
    return lambda labels: tuple([pair for pair in labels if pair[0] not in dropped])


def vector_binop(
    op: str, lhs: Samples, rhs: Samples, matching: VectorMatching, return_bool: bool, where: str
) -> Samples:
    """``vector op vector`` for arithmetic and comparisons, one-to-one or with group_x."""
    sig = signature(matching)
    card = matching.card
    if card is Cardinality.ONE_TO_MANY:
        # Work as many-to-one with the sides swapped, swapping the operands back per pair.
        lhs, rhs = rhs, lhs
    one_side: dict[Labels, Sample] = {}
    for sample in rhs:
        key = sig(sample[0])
        duplicate = one_side.get(key)
        if duplicate is not None:
            side = "left" if card is Cardinality.ONE_TO_MANY else "right"
            raise EvaluationError(
                f"found duplicate series for the match group {format_labels(key)} on the {side} "
                f"hand-side of the operation: [{format_labels(sample[0])}, "
                f"{format_labels(duplicate[0])}]; many-to-many matching not allowed: "
                f"matching labels must be unique on one side (in {where})"
            )
        one_side[key] = sample

    compare = COMPARISON.get(op)
    arith = ARITHMETIC.get(op)
    drop = op in _DROPS_NAME or return_bool
    swapped = card is Cardinality.ONE_TO_MANY
    matched: dict[Labels, set[Labels] | None] = {}
    out: Samples = []
    for many_labels, many_value in lhs:
        key = sig(many_labels)
        one = one_side.get(key)
        if one is None:
            continue
        one_labels, one_value = one
        left, right = (one_value, many_value) if swapped else (many_value, one_value)
        if compare is not None:
            keep = compare(left, right)
            if return_bool:
                value = 1.0 if keep else 0.0
            elif not keep:
                continue
            else:
                value = left
        else:
            assert arith is not None
            value = arith(left, right)
        labels = _result_labels(many_labels, one_labels, matching, drop_name_too=drop)
        if card is Cardinality.ONE_TO_ONE:
            if key in matched:
                raise EvaluationError(
                    "multiple matches for labels: many-to-one matching must be explicit "
                    f"(group_left/group_right) (in {where})"
                )
            matched[key] = None
        else:
            seen = matched.get(key)
            if seen is None:
                seen = matched[key] = set()
            elif labels in seen:
                raise EvaluationError(
                    "multiple matches for labels: grouping labels must ensure unique matches "
                    f"(in {where})"
                )
            seen.add(labels)
        out.append((labels, value))
    return ensure_unique(out, where)


def _result_labels(
    many: Labels, one: Labels, matching: VectorMatching, *, drop_name_too: bool
) -> Labels:
    labels = drop_name(many) if drop_name_too else many
    if matching.card is Cardinality.ONE_TO_ONE:
        if matching.on:
            kept = frozenset(matching.labels)
            labels = tuple([pair for pair in labels if pair[0] in kept])
        elif matching.labels:
            ignored = frozenset(matching.labels)
            labels = tuple([pair for pair in labels if pair[0] not in ignored])
    for name in matching.include:
        # group_x(labels) copies these from the "one" side, removing them if it lacks them.
        value = next((v for n, v in one if n == name), "")
        labels = with_label(labels, name, value)
    return labels


def set_binop(op: str, lhs: Samples, rhs: Samples, matching: VectorMatching) -> Samples:
    """``and`` / ``or`` / ``unless``: keep or drop whole samples by matching labels."""
    sig = signature(matching)
    if op == "or":
        present = {sig(sample[0]) for sample in lhs}
        return lhs + [sample for sample in rhs if sig(sample[0]) not in present]
    right = {sig(sample[0]) for sample in rhs}
    if op == "and":
        return [sample for sample in lhs if sig(sample[0]) in right]
    return [sample for sample in lhs if sig(sample[0]) not in right]
