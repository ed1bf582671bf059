"""A store that keeps the whole window only for the names something reads over time
(``MemoryStore.set_retention(full=...)``) answers every read it promises exactly as a store
keeping everything: an instant read (the evaluator's, at any lookback) at or after ``recent``
seconds before the newest time the store was given, of every series; and any range read of
the names kept whole since the start. Across whole publishes, changes (held series), clears,
series leaving, a second source sharing series, samples stamped off their publish time, and
changes of the policy (a rule reload)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from piggywatch.rules.promql import Evaluator
from piggywatch.store import Labels, MemoryStore, Sample
from piggywatch.store.series import LabelMatcher, MatchOp
from tests.test_store_changes import (
    LABELS,
    NAMES,
    SOURCE,
    T0,
    Snapshot,
    changes_between,
    new_store,
    snapshot_st,
)

RANGED = NAMES[0]  # read over time by the "rules": kept whole throughout
OTHER = "main/other"  # a second source publishing some of the same series, off its stamps


def instant(store: MemoryStore, at: float, lookback: float) -> list[tuple[str, Labels, str, str]]:
    """Every series' value and timestamp as instant queries at ``at`` see them."""
    evaluator = Evaluator(store, lookback=lookback)
    found = []
    for name in NAMES:
        values = evaluator.instant(name, at)
        times = evaluator.instant(f"timestamp({name})", at)
        assert isinstance(values, list) and isinstance(times, list)
        found += [(name, s.labels, repr(s.value), repr(t.value))
                  for s, t in zip(values, times, strict=True)]
    return sorted(found)


def ranged(store: MemoryStore, lo: float, hi: float) -> list[tuple[Labels, list[float], list[str]]]:
    found = store.select([LabelMatcher.of("__name__", MatchOp.EQUAL, RANGED)], lo, hi)
    return sorted((s.labels, list(s.timestamps), [repr(v) for v in s.values]) for s in found)


# What a cycle does: the statements source publishes a snapshot whole or as changes, or its
# cycle fails (cleared now, or at the last publish time); the other source publishes a few
# series stamped a little before its publish time; the policy changes (whether the second
# name is kept whole too, and the recent window).
cycle_st = st.one_of(
    st.tuples(st.just("whole"), snapshot_st),
    st.tuples(st.just("changes"), snapshot_st),
    st.tuples(st.sampled_from(["clear now", "clear"]), st.none()),
    st.tuples(st.just("other"), snapshot_st),
    st.tuples(st.just("policy"), st.tuples(st.booleans(), st.sampled_from([1.0, 2.5, 6.0]))),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cycles=st.lists(st.tuples(cycle_st, st.sampled_from([0.25, 0.5, 1.0, 2.0, 7.0])),
                       min_size=1, max_size=30),
       retention=st.sampled_from([3.0, 10.0, 3600.0]), recent=st.sampled_from([1.0, 2.5, 6.0]),
       lookback=st.sampled_from([1.0, 4.0, 300.0]),
       reads=st.lists(st.integers(0, 29), max_size=6),
       # 0: right at the oldest instant read promised, where the oldest kept point matters.
       behind=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1.0)), min_size=1, max_size=4))
# A recent window widened after a series' older points were dropped under the narrower one.
@example(cycles=[(("whole", {(NAMES[1], LABELS[4]): 0.0}), 0.25),
                 *[(("whole", {}), step) for step in (0.25, 0.25, 0.25, 0.25, 1.0)],
                 (("other", {(NAMES[1], LABELS[4]): 0.0}), 2.0),
                 (("policy", (False, 6.0)), 1.0), (("whole", {}), 1.0)],
         retention=10.0, recent=1.0, lookback=1.0, reads=[], behind=[0.0])
# A held series whose oldest needed point is the held value at an entry it was not written at.
@example(cycles=[(("changes", {(NAMES[1], LABELS[0]): 0.0}), 0.25),
                 (("changes", {(NAMES[1], LABELS[0]): 0.0}), 0.25),
                 (("whole", {(RANGED, LABELS[0]): 0.0}), 7.0)],
         retention=10.0, recent=6.0, lookback=1.0, reads=[], behind=[0.0])
def test_a_store_keeping_history_only_for_ranged_names_answers_as_one_keeping_everything(
        cycles: list[tuple[tuple[str, object], float]], retention: float, recent: float,
        lookback: float, reads: list[int], behind: list[float]) -> None:
    everything, policy = new_store(retention), new_store(retention)
    policy.set_retention(retention, full={RANGED}, recent=recent)
    now = T0
    newest = -math.inf
    # A wider recent window holds from when it was set: what the narrower one had dropped
    # is gone, so reads are promised from no earlier than what it promised then.
    promised = -math.inf
    previous: Snapshot | None = None  # the statements source's snapshot, None when unknown

    def check() -> None:
        # Instant reads from ``recent`` before the newest time given to a little after it.
        for fraction in behind:
            at = max(newest - recent + fraction * (recent + lookback + 1), promised)
            assert instant(policy, at, lookback) == instant(everything, at, lookback)
        assert ranged(policy, T0 - 10, now + 10) == ranged(everything, T0 - 10, now + 10)
        assert ranged(policy, now - 2 * recent, now - recent) == \
            ranged(everything, now - 2 * recent, now - recent)
        assert policy.series_count() == everything.series_count()

    for index, ((kind, arg), step) in enumerate(cycles):
        now += step
        if kind == "policy":
            assert isinstance(arg, tuple)
            both, wider = arg
            if wider > recent:
                promised = max(promised, newest - recent)
            recent = wider
            policy.set_retention(retention, full={RANGED, NAMES[1]} if both else {RANGED},
                                 recent=recent)
            continue
        newest = now
        for store in (everything, policy):
            if kind in ("clear now", "clear"):
                store.clear(SOURCE, now if kind == "clear now" else None)
            elif kind == "other":
                assert isinstance(arg, dict)
                store.publish(OTHER, [Sample(n, labels, v, now - 0.125)
                                      for (n, labels), v in arg.items()], now)
            elif kind == "whole":
                assert isinstance(arg, dict)
                store.publish(SOURCE, [Sample(n, labels, v, now) for (n, labels), v in arg.items()],
                              now)
            else:
                assert isinstance(arg, dict)
                store.publish_changes(SOURCE, changes_between(previous, arg, now), now,
                                      full=previous is None)
        previous = arg if kind == "changes" else None  # type: ignore[assignment]
        if index in reads:  # reading catches held series up: later cycles must not mind
            check()
    check()
    for labels in LABELS:
        assert [(p.timestamp, repr(p.value)) for p in policy.history(RANGED, labels)] == \
            [(p.timestamp, repr(p.value)) for p in everything.history(RANGED, labels)]


def test_a_series_read_only_as_an_instant_keeps_a_few_points() -> None:
    store = new_store(3600.0)
    store.set_retention(3600.0, full={RANGED}, recent=10.0)
    for k in range(600):
        now = T0 + 2 * k
        store.publish(SOURCE, [Sample(name, LABELS[0], float(k), now) for name in NAMES], now)
    assert len(store.history(RANGED, LABELS[0])) == 600
    recent = store.history(NAMES[1], LABELS[0])
    # Its points of the last 10 s, the one before, and a few not dropped yet.
    assert 6 <= len(recent) <= 16
    assert recent[-1].value == 599.0
