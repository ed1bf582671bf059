"""Silences: matching, life cycle with an injected clock, validation, and durability."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from piggywatch.alerting.silences import (
    RETENTION,
    Silence,
    SilenceError,
    Silences,
    SilenceState,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
SLOW_MAIN = {"alertname": "SlowQueries", "severity": "medium", "target": "main"}


@pytest.fixture()
def silences(tmp_path: Path) -> Iterator[Silences]:
    store = Silences(tmp_path / "state.db")
    yield store
    store.close()


def test_an_active_silence_mutes_matching_alerts_only(silences: Silences) -> None:
    silence = silences.create(['alertname="SlowQueries"', 'target=~"main|replica"'],
                              ends_at=NOW + 2 * HOUR, now=NOW, created_by="ana",
                              comment="vacuum running")
    assert silence.id
    assert silences.is_silenced(SLOW_MAIN, NOW + HOUR)
    assert silences.silenced_by(SLOW_MAIN, NOW + HOUR) == [silence.id]
    assert not silences.is_silenced({**SLOW_MAIN, "target": "other"}, NOW + HOUR)
    assert not silences.is_silenced({**SLOW_MAIN, "alertname": "Bloat"}, NOW + HOUR)


def test_a_silence_is_pending_then_active_then_expired(silences: Silences) -> None:
    silence = silences.create(['target="main"'], starts_at=NOW + HOUR, ends_at=NOW + 2 * HOUR,
                              now=NOW)
    assert silence.state(NOW) is SilenceState.PENDING
    assert not silences.is_silenced(SLOW_MAIN, NOW)
    assert silences.is_silenced(SLOW_MAIN, NOW + HOUR)
    assert not silences.is_silenced(SLOW_MAIN, NOW + 2 * HOUR)  # the end is exclusive
    assert silence.state(NOW + 2 * HOUR) is SilenceState.EXPIRED
    assert [s.id for s in silences.active(NOW + 90 * 60)] == [silence.id]


def test_expiring_ends_a_silence_now(silences: Silences) -> None:
    silence = silences.create(['target="main"'], ends_at=NOW + 10 * HOUR, now=NOW)
    expired = silences.expire(silence.id, NOW + HOUR)
    assert expired.ends_at == NOW + HOUR
    assert not silences.is_silenced(SLOW_MAIN, NOW + HOUR)
    assert silences.expire(silence.id, NOW + 2 * HOUR) == expired  # nothing more to do
    with pytest.raises(KeyError, match="no silence with id"):
        silences.expire("nope", NOW)


def test_expiring_a_pending_silence_means_it_never_starts(silences: Silences) -> None:
    silence = silences.create(['target="main"'], starts_at=NOW + HOUR, ends_at=NOW + 5 * HOUR,
                              now=NOW)
    expired = silences.expire(silence.id, NOW)
    assert (expired.starts_at, expired.ends_at) == (NOW, NOW)
    assert not silences.is_silenced(SLOW_MAIN, NOW + 2 * HOUR)


def test_expired_silences_stay_listed_for_a_day_then_go(silences: Silences) -> None:
    silence = silences.create(['target="main"'], ends_at=NOW + HOUR, now=NOW)
    assert [s.id for s in silences.list_all(NOW + HOUR + RETENTION - 1)] == [silence.id]
    assert silences.list_all(NOW + HOUR + RETENTION) == []
    assert silences.get(silence.id) is None


def test_silences_survive_reopening_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = Silences(path)
    kept = first.create(['target="main"'], ends_at=NOW + 5 * HOUR, now=NOW, created_by="ana",
                        comment="maintenance")
    ended = first.create(['target="replica"'], ends_at=NOW + 5 * HOUR, now=NOW)
    first.expire(ended.id, NOW + HOUR)
    first.close()
    again = Silences(path)
    try:
        assert again.get(kept.id) == kept
        assert again.is_silenced(SLOW_MAIN, NOW + 2 * HOUR)
        assert not again.is_silenced({**SLOW_MAIN, "target": "replica"}, NOW + 2 * HOUR)
        assert {s.id for s in again.list_all(NOW + 2 * HOUR)} == {kept.id, ended.id}
    finally:
        again.close()
    with closing(sqlite3.connect(path)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert ("silence_entries",) in tables


def test_a_silence_can_be_updated_in_place_until_it_expires(silences: Silences) -> None:
    silence = silences.create(['target="main"'], ends_at=NOW + HOUR, now=NOW)
    longer = silences.add(Silence(silence.id, silence.matchers, NOW, NOW + 3 * HOUR, "ana",
                                  "longer"), NOW + 10)
    assert silences.get(silence.id) == longer
    assert silences.is_silenced(SLOW_MAIN, NOW + 2 * HOUR)
    silences.expire(silence.id, NOW + 2 * HOUR)
    with pytest.raises(SilenceError, match="has expired"):
        silences.add(longer, NOW + 2 * HOUR + 1)


def test_a_start_in_the_past_becomes_now(silences: Silences) -> None:
    silence = silences.create(['target="main"'], starts_at=NOW - HOUR, ends_at=NOW + HOUR,
                              now=NOW)
    assert silence.starts_at == NOW


@pytest.mark.parametrize(("matchers", "ends_at", "reason"), [
    ([], NOW + HOUR, "at least one matcher"),
    (["target"], NOW + HOUR, "is not a matcher"),
    (['target=~".*"'], NOW + HOUR, "silences everything"),
    (['target="main"'], NOW - 1, "end after it starts"),
])
def test_bad_silences_are_refused_with_a_reason(silences: Silences, matchers: list[str],
                                                ends_at: float, reason: str) -> None:
    with pytest.raises(SilenceError, match=reason):
        silences.create(matchers, ends_at=ends_at, now=NOW)


def test_a_silence_that_already_ended_is_refused(silences: Silences) -> None:
    with pytest.raises(SilenceError, match="end in the future"):
        silences.add(Silence("", ('target="main"',), NOW - 2 * HOUR, NOW - HOUR, "", ""), NOW)


@pytest.mark.parametrize("ends_at", [float("inf"), float("nan"), 2 * 365 * 86400.0])
def test_a_silence_must_end_within_a_year(tmp_path: Path, ends_at: float) -> None:
    silences = Silences(tmp_path / "state.db")
    now = 1_800_000_000.0
    with pytest.raises(SilenceError):
        silences.create(['alertname="X"'], ends_at=now + ends_at, now=now)
    assert silences.active(now) == []
