"""Go's time.Time as Prometheus templates see it (always UTC), and model.ParseDuration."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_NS = 1_000_000_000


class GoMonth(int):
    """time.Month: an int that prints as its English name."""

    go_type = "time.Month"

    def __str__(self) -> str:
        return _MONTHS[self - 1] if 1 <= self <= 12 else f"%!Month({int(self)})"


class GoWeekday(int):
    """time.Weekday: an int that prints as its English name."""

    go_type = "time.Weekday"

    def __str__(self) -> str:
        return _DAYS[self] if 0 <= self <= 6 else f"%!Weekday({int(self)})"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    # Howard Hinnant's days->civil algorithm; valid far beyond datetime's year 1..9999.
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


@dataclass(frozen=True)
class GoTime:
    """A UTC instant with nanosecond precision; pointer marks Go's *time.Time."""

    unix_nanos: int
    pointer: bool = True

    @property
    def go_type(self) -> str:
        return "*time.Time" if self.pointer else "time.Time"

    def _parts(self) -> tuple[int, int, int, int, int, int, int]:
        secs, nanos = divmod(self.unix_nanos, _NS)
        days, rem = divmod(secs, 86400)
        y, m, d = _civil_from_days(days)
        return y, m, d, rem // 3600, rem // 60 % 60, rem % 60, nanos

    def __str__(self) -> str:
        return self.format("2006-01-02 15:04:05.999999999 -0700 MST")

    # Methods reachable from templates, as in {{ (toTime $value).Format "15:04" }}.
    def method(self, name: str) -> tuple[int, Callable[..., object]] | None:
        """(arity, function) of a time.Time method templates may call, or None."""
        y, m, d, hh, mm, ss, ns = self._parts()
        secs = self.unix_nanos // _NS
        nullary: dict[str, object] = {
            "Unix": secs,
            "UnixMilli": self.unix_nanos // 1_000_000,
            "UnixMicro": self.unix_nanos // 1_000,
            "UnixNano": self.unix_nanos,
            "Year": y,
            "Month": GoMonth(m),
            "Day": d,
            "Hour": hh,
            "Minute": mm,
            "Second": ss,
            "Nanosecond": ns,
            "YearDay": self._year_day(),
            "Weekday": GoWeekday((secs // 86400 + 4) % 7),
            "UTC": GoTime(self.unix_nanos, pointer=False),
            "Local": GoTime(self.unix_nanos, pointer=False),
            "String": str(self),
            "IsZero": False,
        }
        if name in nullary:
            value = nullary[name]
            return 0, lambda: value
        if name == "Format":
            return 1, self.format
        return None

    def _year_day(self) -> int:
        y = self._parts()[0]
        jan1 = GoTime(_days_from_civil(y, 1, 1) * 86400 * _NS)
        return (self.unix_nanos - jan1.unix_nanos) // (86400 * _NS) + 1

    def format(self, layout: str) -> str:
        """time.Time.Format with Go's reference-time layout (zone is always UTC)."""
        y, m, d, hh, mm, ss, ns = self._parts()
        out: list[str] = []
        i = 0
        while i < len(layout):
            tok = _match_layout(layout, i)
            if tok is None:
                out.append(layout[i])
                i += 1
                continue
            i += len(tok)
            out.append(self._render(tok, y, m, d, hh, mm, ss, ns))
        return "".join(out)

    def _render(
        self, tok: str, y: int, m: int, d: int, hh: int, mm: int, ss: int, ns: int
    ) -> str:
        if tok == "2006":
            return f"{y:04d}" if y >= 0 else f"-{-y:04d}"
        if tok == "06":
            return f"{y % 100:02d}"
        if tok == "January":
            return _MONTHS[m - 1]
        if tok == "Jan":
            return _MONTHS[m - 1][:3]
        if tok == "01":
            return f"{m:02d}"
        if tok == "1":
            return str(m)
        if tok == "Monday":
            return _DAYS[(self.unix_nanos // _NS // 86400 + 4) % 7]
        if tok == "Mon":
            return _DAYS[(self.unix_nanos // _NS // 86400 + 4) % 7][:3]
        if tok == "02":
            return f"{d:02d}"
        if tok == "_2":
            return f"{d:2d}"
        if tok == "2":
            return str(d)
        if tok == "002":
            return f"{self._year_day():03d}"
        if tok == "__2":
            return f"{self._year_day():3d}"
        if tok == "15":
            return f"{hh:02d}"
        if tok in ("03", "3"):
            h12 = hh % 12 or 12
            return f"{h12:02d}" if tok == "03" else str(h12)
        if tok in ("04", "4"):
            return f"{mm:02d}" if tok == "04" else str(mm)
        if tok in ("05", "5"):
            return f"{ss:02d}" if tok == "05" else str(ss)
        if tok in ("PM", "pm"):
            s = "PM" if hh >= 12 else "AM"
            return s if tok == "PM" else s.lower()
        if tok == "MST":
            return "UTC"
        if tok.startswith("Z"):
            return "Z"
        if tok.startswith("-07"):
            return "+" + tok[1:].replace("07", "00")
        # Fractional seconds: .000 keeps zeros, .999 trims them (and the dot if empty).
        digits = f"{ns:09d}"[: len(tok) - 1]
        if tok[1] == "9":
            digits = digits.rstrip("0")
            return tok[0] + digits if digits else ""
        return tok[0] + digits


_LAYOUT_TOKENS = sorted(
    [
        "January", "Jan", "Monday", "Mon", "MST", "2006", "002", "__2", "_2", "01", "02", "03",
        "04", "05", "06", "15", "1", "2", "3", "4", "5", "PM", "pm",
        "-07:00:00", "-070000", "-07:00", "-0700", "-07",
        "Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07",
    ],
    key=len,
    reverse=True,
)
_FRACTION = re.compile(r"[.,](0+|9+)(?![0-9])")


def _match_layout(layout: str, i: int) -> str | None:
    m = _FRACTION.match(layout, i)
    if m:
        return m.group(0)
    for tok in _LAYOUT_TOKENS:
        if layout.startswith(tok, i):
            # Go reads "Jan", "Mon" and "MST" as words only when no lower-case letter follows.
            nxt = layout[i + len(tok) : i + len(tok) + 1]
            if tok in ("Jan", "Mon", "MST") and nxt.islower():
                continue
            return tok
    return None


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DURATION = re.compile(
    r"^(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?"
    r"(?:([0-9]+)s)?(?:([0-9]+)ms)?$"
)
_UNIT_MS = (
    1000 * 60 * 60 * 24 * 365, 1000 * 60 * 60 * 24 * 7, 1000 * 60 * 60 * 24, 1000 * 60 * 60,
    1000 * 60, 1000, 1,
)


def parse_prometheus_duration(text: str) -> float:
    """model.ParseDuration, in seconds; raises ValueError with Prometheus's message."""
    if text == "0":
        return 0.0
    if text == "":
        raise ValueError("empty duration string")
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f'not a valid duration string: "{text}"')
    total_ms = 0
    for group, unit in zip(m.groups(), _UNIT_MS, strict=True):
        if group:
            total_ms += int(group) * unit
            if total_ms * 1_000_000 > 2**63 - 1:
                raise ValueError("duration out of range")
    return total_ms / 1000
