"""The fixed clock of tests that involve time: ``PIGGYWATCH_TEST_NOW`` or a default instant.

A test that involves the calendar takes its "now" from :func:`frozen_now`, stamps its rows
with times computed from it (never the database's ``now()``), and derives its expectations
from it, so it passes on any day and in any time zone. CI runs such tests under far-apart
instants, e.g. ``PIGGYWATCH_TEST_NOW=2027-01-31T23:59:00Z TZ=Pacific/Kiritimati``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

__all__ = ["DEFAULT_TEST_NOW", "ENV", "frozen_epoch", "frozen_now"]

ENV = "PIGGYWATCH_TEST_NOW"
# Nothing special about this instant (mid-month, mid-morning UTC); tests must not rely on it.
DEFAULT_TEST_NOW = "2026-07-15T09:27:41Z"


def frozen_now() -> datetime:
    """The test clock as an aware UTC datetime (``PIGGYWATCH_TEST_NOW``, ISO 8601)."""
    text = os.environ.get(ENV, "").strip() or DEFAULT_TEST_NOW
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{ENV}={text!r} is not an ISO 8601 date and time; use e.g. "
                         "2027-02-28T23:30:00Z") from None
    if at.tzinfo is None:
        raise ValueError(f"{ENV}={text!r} has no time zone; add Z or an offset such as "
                         "+09:00, e.g. 2027-02-28T23:30:00Z")
    return at.astimezone(UTC)


def frozen_epoch() -> float:
    """The test clock in epoch seconds."""
    return frozen_now().timestamp()
