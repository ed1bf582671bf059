"""Functions over instant vectors: math, clamping, sorting, histogram_quantile, labels, absent."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

from piggywatch.rules.promql import floats
from piggywatch.rules.promql.errors import EvaluationError
from piggywatch.rules.promql.nodes import Expr, MatrixSelector, ParenExpr, VectorSelector
from piggywatch.rules.promql.values import (
    METRIC_NAME,
    Samples,
    drop_name,
    ensure_unique,
    label_value,
    with_label,
)
from piggywatch.store.samples import Labels
from piggywatch.store.series import MatchOp

BUCKET_LABEL = "le"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def elementwise(fn: Callable[[float], float], vector: Samples, where: str) -> Samples:
    """``fn`` applied to every value, dropping the metric name."""
    out = [(drop_name(labels), fn(value)) for labels, value in vector]
    return ensure_unique(out, where)


def clamp_min(vector: Samples, bound: float, where: str) -> Samples:
    """Values below ``bound`` raised to it (NaN stays NaN)."""
    return elementwise(lambda v: floats.go_max(bound, v), vector, where)


def clamp_max(vector: Samples, bound: float, where: str) -> Samples:
    """Values above ``bound`` lowered to it (NaN stays NaN)."""
    return elementwise(lambda v: floats.go_min(bound, v), vector, where)


def clamp(vector: Samples, low: float, high: float, where: str) -> Samples:
    """Values limited to ``[low, high]``; nothing at all when ``high < low``."""
    if high < low:
        return []
    return elementwise(lambda v: floats.go_max(low, floats.go_min(high, v)), vector, where)


def sort(vector: Samples, descending: bool) -> Samples:
    """Ordered by value (labels kept); NaN last either way."""
    sign = -1.0 if descending else 1.0
    return sorted(vector, key=lambda sample: (sample[1] != sample[1], sign * sample[1]))


def label_join(
    vector: Samples, dst: str, separator: str, sources: list[str], where: str
) -> Samples:
    """Set ``dst`` to the values of ``sources`` joined by ``separator`` (empty removes it)."""
    if not _LABEL_NAME.fullmatch(dst):
        raise EvaluationError(f"invalid destination label name in label_join(): {dst!r}")
    for name in sources:
        if not _LABEL_NAME.fullmatch(name):
            raise EvaluationError(f"invalid source label name in label_join(): {name!r}")
    out: Samples = []
    for labels, value in vector:
        joined = separator.join(label_value(labels, name) for name in sources)
        out.append((with_label(labels, dst, joined), value))
    return ensure_unique(out, where)


def round_to(vector: Samples, to_nearest: float, where: str) -> Samples:
    """Values rounded to the nearest multiple of ``to_nearest``; halves round up."""
    # Multiplying by the inverse is what Prometheus does (fewer float surprises than dividing).
    inverse = floats.div(1.0, to_nearest)

    def rounded(v: float) -> float:
        return floats.div(floats.floor(v * inverse + 0.5), inverse)

    return elementwise(rounded, vector, where)


def absent_labels(arg: Expr) -> Labels:
    """Labels for ``absent(arg)``: those fixed by ``=`` matchers of a lone selector.

    A label with more than one matcher is left out: it has no single value to report.
    """
    while isinstance(arg, ParenExpr):
        arg = arg.expr
    if isinstance(arg, MatrixSelector):
        arg = arg.selector
    if not isinstance(arg, VectorSelector):
        return ()
    fixed: dict[str, str] = {}
    ambiguous: list[str] = []
    for matcher in arg.matchers:
        if matcher.name == METRIC_NAME:
            continue
        if matcher.op is MatchOp.EQUAL and matcher.name not in fixed:
            fixed[matcher.name] = matcher.value
        else:
            ambiguous.append(matcher.name)
    for name in ambiguous:
        fixed.pop(name, None)
    return tuple(sorted((name, value) for name, value in fixed.items() if value))


def histogram_quantile(q: float, vector: Samples, where: str) -> Samples:
    """The q-quantile of each classic histogram (``le`` buckets) in ``vector``."""
    groups: dict[Labels, tuple[Labels, list[tuple[float, float]]]] = {}
    for labels, value in vector:
        upper = _parse_bound(label_value(labels, BUCKET_LABEL))
        if upper is None:
            continue  # no or malformed le label: not a bucket
        key = tuple([pair for pair in labels if pair[0] != BUCKET_LABEL])
        group = groups.get(key)
        if group is None:
            group = groups[key] = (drop_name(key), [])
        group[1].append((upper, value))
    out = [(labels, bucket_quantile(q, buckets)) for labels, buckets in groups.values()]
    return ensure_unique(out, where)


def _parse_bound(text: str) -> float | None:
    if not text or text != text.strip() or "_" in text:
        return None  # Python's float() accepts these, Go's ParseFloat does not
    try:
        return float(text)
    except ValueError:
        return None


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's interpolation within cumulative ``(upper bound, count)`` buckets."""
    if q != q:
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets.sort(key=lambda bucket: bucket[0])
    if buckets[-1][0] != math.inf:
        return math.nan
    bounds, counts = _coalesce(buckets)
    # Counts must not decrease with the bound; scrapes that are not atomic can break that.
    highest = -math.inf
    for i, count in enumerate(counts):
        if count > highest:
            highest = count
        elif count < highest:
            counts[i] = highest
    if len(bounds) < 2:
        return math.nan
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = _go_search(len(bounds) - 1, lambda i: counts[i] >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0
    end = bounds[b]
    count = counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * floats.div(rank, count)


def _coalesce(buckets: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    # Buckets with equal bounds (say le="1" and le="1.0") are one bucket.
    bounds = [buckets[0][0]]
    counts = [buckets[0][1]]
    for bound, count in buckets[1:]:
        if bound == bounds[-1]:
            counts[-1] += count
        else:
            bounds.append(bound)
            counts.append(count)
    return bounds, counts


def _go_search(n: int, predicate: Callable[[int], bool]) -> int:
    # Go's sort.Search, probe for probe, so a non-monotonic predicate (NaN counts) lands
    # where Prometheus lands.
    low, high = 0, n
    while low < high:
        middle = (low + high) >> 1
        if not predicate(middle):
            low = middle + 1
        else:
            high = middle
    return low


@functools.lru_cache(maxsize=256)
def _anchored(regex: str) -> re.Pattern[str]:
    # Used with fullmatch: Prometheus anchors the regex at both ends.
    return re.compile(f"(?:{regex})")


def label_replace(
    vector: Samples, dst: str, replacement: str, src: str, regex: str, where: str
) -> Samples:
    """Set ``dst`` from ``replacement`` (``$1``, ``${name}``) where ``src`` fully matches."""
    pattern = _anchored(regex)
    out: Samples = []
    for labels, value in vector:
        match = pattern.fullmatch(label_value(labels, src))
        if match is not None:
            labels = with_label(labels, dst, expand_template(replacement, match))
        out.append((labels, value))
    return ensure_unique(out, where)


_NAME_CHAR = re.compile(r"\w")


def expand_template(template: str, match: re.Match[str]) -> str:
    """Go's ``regexp.Expand``: ``$$`` is ``$``; ``$name`` takes the longest run of word
    characters (so ``$1x`` is the group named ``1x``, usually empty); a bad ``$`` stays."""
    out: list[str] = []
    i = 0
    while True:
        dollar = template.find("$", i)
        if dollar < 0:
            out.append(template[i:])
            return "".join(out)
        out.append(template[i:dollar])
        i = dollar + 1
        if template.startswith("$", i):
            out.append("$")
            i += 1
            continue
        braced = template.startswith("{", i)
        j = start = i + 1 if braced else i
        while j < len(template) and _NAME_CHAR.match(template, j):
            j += 1
        name = template[start:j]
        if not name or (braced and not template.startswith("}", j)):
            out.append("$")  # malformed: the $ is literal text
            continue
        i = j + 1 if braced else j
        out.append(_group(match, name))


def _group(match: re.Match[str], name: str) -> str:
    if name.isascii() and name.isdigit() and not (name.startswith("0") and len(name) > 1):
        number = int(name)
        found = match.group(number) if number <= len(match.groups()) else None
    else:
        found = match.groupdict().get(name)
    return found or ""
