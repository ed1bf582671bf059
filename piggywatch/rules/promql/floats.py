"""Float arithmetic with Go's results where Python raises; the sums and quantiles of Prometheus.

Python raises on ``1 / 0``, ``math.log(0)`` or ``math.exp(1000)``; Prometheus (Go) returns
±Inf or NaN. Every operation an expression can reach goes through these helpers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

INF = math.inf
NAN = math.nan
_isinf = math.isinf  # looked up once: it runs per point in the loops below


def div(a: float, b: float) -> float:
    """``a / b`` with IEEE results for a zero divisor."""
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or a != a:
            return NAN
        return math.copysign(INF, a) * math.copysign(1.0, b)


def mod(a: float, b: float) -> float:
    """Go's ``math.Mod``: the sign of ``a``; NaN for a zero divisor or an infinite ``a``."""
    try:
        return math.fmod(a, b)
    except ValueError:
        return NAN


def _odd_integer(x: float) -> bool:
    return math.isfinite(x) and x == math.floor(x) and math.fmod(x, 2.0) != 0.0


def power(a: float, b: float) -> float:
    """Go's ``math.Pow``: NaN for a negative base with a fractional exponent, ±Inf on overflow."""
    try:
        return math.pow(a, b)
    except OverflowError:
        return -INF if a < 0 and _odd_integer(b) else INF
    except ValueError:
        if a == 0:  # zero to a negative power
            return math.copysign(INF, a) if _odd_integer(b) else INF
        return NAN


def sqrt(x: float) -> float:
    """Square root; NaN for negative numbers."""
    return math.sqrt(x) if x >= 0 or x != x else NAN


# Go's math.Log (FreeBSD's e_log.c), ported so that ln, log2 and log10 give Prometheus's
# results to the last bit; the C library's log differs in the last bit for about one value
# in twenty.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_L1, _L2, _L3, _L4, _L5, _L6, _L7 = (
    6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
    2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
    1.479819860511658591e-01,
)  # fmt: skip
_HALF_SQRT2 = math.sqrt(2) / 2


def ln(x: float) -> float:
    """Go's ``math.Log``: -Inf at zero, NaN for negative numbers."""
    if x != x or x == INF:
        return x
    if x < 0:
        return NAN
    if x == 0:
        return -INF
    f1, exponent = math.frexp(x)
    if f1 < _HALF_SQRT2:
        f1 *= 2
        exponent -= 1
    f = f1 - 1
    k = float(exponent)
    s = f / (2 + f)
    s2 = s * s
    s4 = s2 * s2
    t1 = s2 * (_L1 + s4 * (_L3 + s4 * (_L5 + s4 * _L7)))
    t2 = s4 * (_L2 + s4 * (_L4 + s4 * _L6))
    r = t1 + t2
    hfsq = 0.5 * f * f
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)


def exp(x: float) -> float:
    """``e ** x``; +Inf on overflow."""
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def floor(x: float) -> float:
    """Go's ``math.Floor``: a float, and ±Inf / NaN pass through."""
    if not math.isfinite(x):
        return x
    return math.copysign(float(math.floor(x)), x)


def ceil(x: float) -> float:
    """Go's ``math.Ceil``: a float, keeping the sign of zero (``ceil(-0.5)`` is ``-0``)."""
    if not math.isfinite(x):
        return x
    return math.copysign(float(math.ceil(x)), x)


def go_max(a: float, b: float) -> float:
    """Go's ``math.Max``: NaN if either is NaN."""
    if a != a or b != b:
        return NAN
    return a if a > b else b


def go_min(a: float, b: float) -> float:
    """Go's ``math.Min``: NaN if either is NaN."""
    if a != a or b != b:
        return NAN
    return a if a < b else b


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """One step of a Kahan-Neumaier sum: ``total + inc`` and the new compensation."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def kahan_sum(values: Sequence[float]) -> float:
    """Kahan-Neumaier compensated sum, exactly as Prometheus's ``sum_over_time``."""
    total = c = 0.0
    for v in values:
        t = total + v
        if abs(total) >= abs(v):
            c += (total - t) + v
        else:
            c += (v - t) + total
        total = t
    return total if _isinf(total) else total + c


def kahan_mean(values: Sequence[float]) -> float:
    """Incremental compensated mean, as Prometheus's ``avg_over_time``.

    Each step adds ``v/n - mean/n`` so that large values do not overflow a running sum.
    """
    mean = c = count = 0.0
    absolute = abs
    # First without the checks for an infinite mean: an infinite mean turns into NaN at the
    # next step here and stays NaN, so a finite result proves that the mean never was
    # infinite, and that the loop below (which would take the same steps) gives the same.
    for v in values:
        count += 1.0
        inc = v / count - mean / count
        t = mean + inc
        if absolute(mean) >= absolute(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    if mean - mean == 0.0:  # finite
        return mean + c
    mean = c = count = 0.0
    for v in values:
        count += 1.0
        if _isinf(mean):
            if _isinf(v) and (mean > 0) == (v > 0):
                continue  # same-signed infinities: the mean is already right
            if not _isinf(v) and v == v:
                continue  # a finite value cannot move an infinite mean
        inc = v / count - mean / count
        t = mean + inc
        if abs(mean) >= abs(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean if _isinf(mean) else mean + c


def incremental_mean(values: Sequence[float]) -> float:
    """Incremental mean without compensation, as Prometheus 2.x's ``avg`` aggregation."""
    mean = values[0]
    count = 1.0
    for v in values[1:]:
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue
            if not math.isinf(v) and v == v:
                continue
        mean += v / count - mean / count
    return mean


def smallest(values: Sequence[float]) -> float:
    """Prometheus's min: the smallest number, the first of equals; NaN only if all are NaN."""
    numbers = _numbers_first(values)
    low = sorted(numbers)[0]  # sorted compares floats natively: far faster than min()
    return min(numbers) if low == 0 else low  # min() keeps the first zero's sign, like Go


def largest(values: Sequence[float]) -> float:
    """Prometheus's max: the largest number, the first of equals; NaN only if all are NaN."""
    numbers = _numbers_first(values)
    high = sorted(numbers)[-1]
    return max(numbers) if high == 0 else high


def _numbers_first(values: Sequence[float]) -> Sequence[float]:
    # Without NaNs, or all of them if all are NaN. Python's min and max give
    # order-dependent answers with NaNs; Prometheus ignores NaNs unless there is nothing else.
    total = sum(values)
    if total == total:  # no NaN (the C-level sum is the cheap way to find out)
        return values
    return [v for v in values if v == v] or values


def sorted_nan_first(values: Sequence[float]) -> list[float]:
    """Ascending, with NaNs first, as Prometheus sorts values for a quantile."""
    total = sum(values)
    if total == total:  # no NaN (the C-level sum is the cheap way to find out)
        return sorted(values)
    numbers = sorted(v for v in values if v == v)
    return [NAN] * (len(values) - len(numbers)) + numbers


def quantile(q: float, values: Sequence[float]) -> float:
    """The q-quantile by linear interpolation between closest ranks (Prometheus's ``quantile``)."""
    if not values or q != q:
        return NAN
    if q < 0:
        return -INF
    if q > 1:
        return INF
    ordered = sorted_nan_first(values)
    n = len(ordered)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[lower] * (1 - weight) + ordered[upper] * weight


def _libm(fn: Callable[[float], float], *, overflow: float = INF) -> Callable[[float], float]:
    """``fn`` with Go's answers where Python raises: NaN outside the domain, ±Inf on overflow."""

    def wrapped(x: float) -> float:
        try:
            return fn(x)
        except ValueError:
            return NAN
        except OverflowError:
            return math.copysign(overflow, x) if overflow == INF else overflow

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = f"Go's ``math.{fn.__name__.capitalize()}``, NaN outside its domain."
    return wrapped


sin = _libm(math.sin)
cos = _libm(math.cos)
tan = _libm(math.tan)
asin = _libm(math.asin)
acos = _libm(math.acos)
atan = _libm(math.atan)
tanh = _libm(math.tanh)
asinh = _libm(math.asinh)
acosh = _libm(math.acosh)


def sinh(x: float) -> float:
    """Go's ``math.Sinh``; past 21 it is ``Exp(x) / 2``, so it overflows to ±Inf from 709.8."""
    if abs(x) > 21:
        return math.copysign(exp(abs(x)) * 0.5, x)
    return math.sinh(x)


def cosh(x: float) -> float:
    """Go's ``math.Cosh``; past 21 it is ``Exp(|x|) / 2``, so it overflows to +Inf from 709.8."""
    if abs(x) > 21:
        return exp(abs(x)) * 0.5
    return math.cosh(x)


def atanh(x: float) -> float:
    """Go's ``math.Atanh``: ±Inf at ±1, NaN beyond."""
    if x == 1.0 or x == -1.0:
        return math.copysign(INF, x)
    try:
        return math.atanh(x)
    except ValueError:
        return NAN


def log2(x: float) -> float:
    """Go's ``math.Log2``: exact for powers of two, ``Log(frac) / Ln2 + exp`` otherwise."""
    if not x > 0 or math.isinf(x):
        return ln(x)
    frac, exponent = math.frexp(x)
    if frac == 0.5:
        return float(exponent - 1)
    return ln(frac) * _INV_LN2 + float(exponent)


def log10(x: float) -> float:
    """Go's ``math.Log10``: ``Log2(x) * (Ln2 / Ln10)``, so ``log10(1000)`` is 2.9999999999999996."""
    return log2(x) * _LN2_OVER_LN10


# Go folds constant expressions exactly, then rounds once: 1/Ln2 and Ln2/Ln10 as doubles.
_INV_LN2 = 1.4426950408889634
_LN2_OVER_LN10 = 0.3010299956639812


def sgn(x: float) -> float:
    """1 for positive, -1 for negative; zeros (with their sign) and NaN stay as they are."""
    if x < 0:
        return -1.0
    if x > 0:
        return 1.0
    return x


def deg(x: float) -> float:
    """Radians to degrees, in Prometheus's order of operations."""
    return x * 180 / math.pi


def rad(x: float) -> float:
    """Degrees to radians, in Prometheus's order of operations."""
    return x * math.pi / 180
