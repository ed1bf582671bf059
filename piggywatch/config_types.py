"""Value types shared by configuration models."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# The longest duration accepted anywhere (config and rule files): the scheduler and the
# waits cannot reach much further, and nothing useful is ten years away.
MAX_DURATION_SECONDS = 3650 * 86400.0
MAX_DURATION_TEXT = "3650d (ten years)"


def parse_duration(value: object, *, zero: bool = False) -> float:
    """Turn ``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"`` or a number of seconds into seconds.

    ``zero`` allows ``0s`` (for waits that may be skipped, such as a route's group_wait)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration; write it like 30s, 5m or 1h")
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration; write it like 30s, 5m or 1h")
    if seconds < 0 or (seconds == 0 and not zero):
        raise ValueError("a duration must be greater than zero")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is too long: a duration is at most {MAX_DURATION_TEXT}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
# A duration that may be 0s.
DurationOrZero = Annotated[float, BeforeValidator(lambda v: parse_duration(v, zero=True))]
