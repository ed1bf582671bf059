"""Prometheus's template functions (prometheus/template/template.go, v2.42).

humanize* and the time functions are built on Go's fmt, so their output follows Go's
number formatting exactly; query adapts the caller's query function to Go's queryResult.
"""

from __future__ import annotations

import ipaddress
import math
import unicodedata
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import _gofmt, _goregexp, _strconv
from ._builtins import (
    ANY,
    BUILTINS,
    RESULT,
    SAMPLE,
    STRING,
    Func,
    FuncError,
    url_query_escape,
)
from ._gotime import GoTime, parse_prometheus_duration
from ._values import HTML, GoMap, QueryResult, Sample, string_map, type_name


class SampleLike(Protocol):
    """What a query callable returns per series (QuerySample satisfies it)."""

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...


QueryCallable = Callable[[str], Sequence[SampleLike]]


@dataclass(frozen=True)
class Env:
    """Per-render inputs the functions need."""

    query: QueryCallable | None
    external_url: str


# Prometheus conversions and formatting (template.go).
def convert_to_float(v: object) -> float:
    """Prometheus's convertToFloat: float64, string, and integer types."""
    if isinstance(v, float):
        return v
    if type(v) is str:
        try:
            return _strconv.parse_float(v)
        except _strconv.SyntaxErr as e:
            raise FuncError(str(e)) from None
    if type(v) is int:
        return float(v)
    raise FuncError(f"can't convert {type_name(v)} to float")


def _g4(v: float) -> str:
    return _gofmt.sprintf("%.4g", [v])


def humanize(i: object) -> str:
    """SI prefixes with 4 significant digits: 1.235M, 12.34m."""
    v = convert_to_float(i)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix = p
            v /= 1000
        return _g4(v) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return _g4(v) + prefix


def humanize1024(i: object) -> str:
    """Binary prefixes: 1.5ki, 2Mi."""
    v = convert_to_float(i)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix = p
        v /= 1024
    return _g4(v) + prefix


def go_int64(v: float) -> int:
    """Go's int64(float64) on amd64: truncation, and MinInt64 when out of range."""
    if math.isnan(v) or not -(2.0**63) <= v < 2.0**63:
        return -(2**63)
    return int(v)


def _go_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _go_mod(a: int, b: int) -> int:
    return a - b * _go_div(a, b)


def humanize_duration(i: object) -> str:
    """Seconds as 1d 2h 3m 4s, 1.5s or 150ms."""
    v = convert_to_float(i)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return _gofmt.sprintf("%.4gs", [v])
    if abs(v) >= 1:
        sign = ""
        if v < 0:
            sign, v = "-", -v
        duration = go_int64(v)
        seconds = _go_mod(duration, 60)
        minutes = _go_mod(_go_div(duration, 60), 60)
        hours = _go_mod(_go_div(_go_div(duration, 60), 60), 24)
        days = _go_div(_go_div(_go_div(duration, 60), 60), 24)
        if days != 0:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours != 0:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes != 0:
            return f"{sign}{minutes}m {seconds}s"
        return _gofmt.sprintf("%s%.4gs", [sign, v])
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix = p
        v *= 1000
    return _gofmt.sprintf("%.4g%ss", [v, prefix])


def humanize_percentage(i: object) -> str:
    """A ratio as a percentage with 4 significant digits: 0.1234 -> 12.34%."""
    return _gofmt.sprintf("%.4g%%", [convert_to_float(i) * 100])


def _float_to_time(v: float) -> GoTime:
    if math.isnan(v) or math.isinf(v):
        raise FuncError("value is NaN or Inf")
    ts = v * 1e9
    if ts > 2.0**63 - 1 or ts < -(2.0**63):
        raise FuncError(
            f"{_gofmt.format_go_float(v)} cannot be represented as a nanoseconds timestamp "
            "since it overflows int64"
        )
    # model.TimeFromUnixNano keeps whole milliseconds, truncating toward zero.
    return GoTime(_go_div(go_int64(ts), 1_000_000) * 1_000_000)


def humanize_timestamp(i: object) -> str:
    """Unix seconds as Go prints a UTC time.Time: 1970-01-01 00:00:01.5 +0000 UTC."""
    v = convert_to_float(i)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    return str(_float_to_time(v))


def to_time(i: object) -> GoTime:
    """Unix seconds as a *time.Time."""
    return _float_to_time(convert_to_float(i))


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """net.SplitHostPort; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def _is_ip(host: str) -> bool:
    if "%" in host:
        return False  # net.ParseIP rejects IPv6 zones
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def strip_port(hostport: str) -> str:
    """host:port -> host; anything unsplittable is returned unchanged."""
    split = _split_host_port(hostport)
    return hostport if split is None else split[0]


def strip_domain(hostport: str) -> str:
    """db1.example.com:5432 -> db1:5432; IP addresses are returned unchanged."""
    split = _split_host_port(hostport)
    host, port = (hostport, "") if split is None else split
    if _is_ip(host):
        return hostport
    host = host.split(".")[0]
    if port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host


def _is_separator(c: str) -> bool:
    if ord(c) <= 0x7F:
        return not (c.isalnum() or c == "_")
    cat = unicodedata.category(c)
    if cat.startswith("L") or cat == "Nd":
        return False
    return c.isspace()


def _map_runes(s: str, conv: Callable[[str], str]) -> str:
    # Go maps rune by rune; Python's full case mappings can grow a string ('ß' -> 'SS').
    out = []
    for c in s:
        mapped = conv(c)
        out.append(mapped if len(mapped) == 1 else c)
    return "".join(out)


def title(s: str) -> str:
    """strings.Title: upper-case the first letter of each word."""
    out = []
    prev = " "
    for c in s:
        if _is_separator(prev):
            t = c.title()
            out.append(t if len(t) == 1 else c)
        else:
            out.append(c)
        prev = c
    return "".join(out)


def to_upper(s: str) -> str:
    """strings.ToUpper."""
    return _map_runes(s, str.upper)


def to_lower(s: str) -> str:
    """strings.ToLower."""
    return _map_runes(s, lambda c: "i" if c == "\u0130" else c.lower())


def _regexp(pattern: str) -> object:
    try:
        return _goregexp.compile_go(pattern)
    except _goregexp.GoRegexpError as e:
        return e


def match(pattern: str, text: str) -> bool:
    """regexp.MatchString."""
    regex = _regexp(pattern)
    if isinstance(regex, _goregexp.GoRegexpError):
        raise FuncError(str(regex))
    return _goregexp.compile_go(pattern).search(text) is not None


def re_replace_all(pattern: str, repl: str, text: str) -> str:
    """regexp.MustCompile(pattern).ReplaceAllString(text, repl)."""
    regex = _regexp(pattern)
    if isinstance(regex, _goregexp.GoRegexpError):
        raise FuncError(_goregexp.must_compile_message(pattern, regex))
    return _goregexp.replace_all(_goregexp.compile_go(pattern), text, repl)


def graph_link(expr: str) -> str:
    """strutil.GraphLinkForExpression."""
    return f"/graph?g0.expr={url_query_escape(expr)}&g0.tab=0"


def table_link(expr: str) -> str:
    """strutil.TableLinkForExpression."""
    return f"/graph?g0.expr={url_query_escape(expr)}&g0.tab=1"


def _first(v: QueryResult) -> Sample:
    if v:
        return v[0]
    raise FuncError("first() called on vector with no elements")


def _nil_sample(s: Sample | None) -> Sample:
    if s is None:
        raise FuncError("runtime error: invalid memory address or nil pointer dereference")
    return s


def _sort_by_label(label: str, v: QueryResult) -> QueryResult:
    # Go sorts the result in place and returns it; Python's sort is stable like sort.Stable.
    v.sort(key=lambda s: str(s.labels.get(label, "")).encode("utf-8", "surrogateescape"))
    return v


def _parse_duration(d: str) -> float:
    try:
        return parse_prometheus_duration(d)
    except ValueError as e:
        raise FuncError(str(e)) from None


def _args(*args: object) -> GoMap:
    return GoMap(((f"arg{i}", a) for i, a in enumerate(args)), elem_type=ANY, zero=None)


def _query(env: Env, q: str) -> QueryResult:
    if env.query is None:
        raise FuncError("no query function is available to this template")
    try:
        samples = env.query(q)
    except Exception as e:
        raise FuncError(str(e)) from e
    return QueryResult(Sample(string_map(dict(s.labels).items()), float(s.value)) for s in samples)


def _external_url_path(env: Env) -> str:
    return urllib.parse.urlsplit(env.external_url).path


_STATIC_PROMETHEUS: dict[str, Func] = {
    "first": Func((RESULT,), _first),
    "label": Func((STRING, SAMPLE), lambda name, s: _nil_sample(s).labels.get(name, "")),
    "value": Func((SAMPLE,), lambda s: _nil_sample(s).value),
    "strvalue": Func((SAMPLE,), lambda s: _nil_sample(s).labels.get("__value__", "")),
    "args": Func((ANY,), _args, variadic=True),
    "reReplaceAll": Func((STRING, STRING, STRING), re_replace_all),
    "safeHtml": Func((STRING,), HTML),
    "match": Func((STRING, STRING), match),
    "title": Func((STRING,), title),
    "toUpper": Func((STRING,), to_upper),
    "toLower": Func((STRING,), to_lower),
    "graphLink": Func((STRING,), graph_link),
    "tableLink": Func((STRING,), table_link),
    "sortByLabel": Func((STRING, RESULT), _sort_by_label),
    "stripPort": Func((STRING,), strip_port),
    "stripDomain": Func((STRING,), strip_domain),
    "humanize": Func((ANY,), humanize),
    "humanize1024": Func((ANY,), humanize1024),
    "humanizeDuration": Func((ANY,), humanize_duration),
    "humanizePercentage": Func((ANY,), humanize_percentage),
    "humanizeTimestamp": Func((ANY,), humanize_timestamp),
    "toTime": Func((ANY,), to_time),
    "parseDuration": Func((STRING,), _parse_duration),
}

_ENV_FUNCTIONS = ("query", "pathPrefix", "externalURL")

FUNCTION_NAMES: frozenset[str] = frozenset(BUILTINS) | frozenset(_STATIC_PROMETHEUS) | frozenset(
    _ENV_FUNCTIONS
)


def functions(env: Env) -> dict[str, Func]:
    """Every function available to one rendering."""
    table = {**BUILTINS, **_STATIC_PROMETHEUS}
    table["query"] = Func((STRING,), lambda q: _query(env, q))
    table["pathPrefix"] = Func((), lambda: _external_url_path(env))
    table["externalURL"] = Func((), lambda: env.external_url)
    return table
