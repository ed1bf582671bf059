"""In-memory store: the latest snapshot of every source plus a compact history per series."""

from __future__ import annotations

import math
import sys
import threading
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from piggywatch.store.buffers import SeriesHistory, Timeline, TimeRange
from piggywatch.store.exposition import Chunk, Exposition
from piggywatch.store.samples import Changes, Labels, MetricSpec, Sample
from piggywatch.store.series import HeldValues, LabelMatcher, MatchOp, Series

_NAME_LABEL = "__name__"
_SWEEP_MIN_APPENDS = 1024
# The pairs _with_name puts in: metric names are few, so this stays small.
_NAME_PAIRS: dict[str, tuple[str, str]] = {}
# A set of series no larger than this is left as it is, however empty its table.
_SPARSE_SET_BYTES = 4096
_MATCH_CACHE_SIZE = 4096
# Far outside any real clock (about 317,000 years either side of 1970), yet small enough
# that the edge search in _first_ms_from / _last_ms_to takes a step or two at most.
_NEVER = -(10**16)
_FOREVER = 10**16
# How far behind the newest time the store was given an instant read stays exact for the
# series that keep only recent points, by default (see ``MemoryStore.set_retention``).
RECENT = 60.0


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One stored point of a series."""

    timestamp: float
    value: float


@dataclass(slots=True)
class _Snapshot:
    batch: tuple[Sample, ...] | None
    # The series it holds; None for a source that publishes changes, whose ``series`` say.
    owned: set[SeriesHistory] | None
    # Exposed with each sample's own timestamp (see ``publish``).
    stamped: bool = False
    # A source that publishes changes (``publish_changes``): each series' latest value, by
    # its history, and the time of its latest publish, at which every series stands. Values,
    # not the samples: 25,000 samples at top_k 5000 are 2 MB kept for current() alone; and
    # by the history, not by (name, labels), which would be a key and an entry tuple more
    # a series (2.8 MB at top_k 5000).
    series: dict[SeriesHistory, float] | None = None
    at: float = 0.0

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Every sample of the snapshot (a changes-only source's, stamped at its latest
        publish: a series that did not change was collected again then)."""
        if self.batch is None:
            assert self.series is not None
            at = self.at
            self.batch = tuple(Sample(hist.name, hist.labels, value, at)
                               for hist, value in self.series.items())
        return self.batch

    def held(self) -> Iterable[SeriesHistory]:
        """The series it holds."""
        if self.owned is not None:
            return self.owned
        assert self.series is not None
        return self.series.keys()

    def owned_set(self) -> set[SeriesHistory]:
        """The series it holds, as a set (made for a source that publishes changes)."""
        return self.owned if self.owned is not None else set(self.held())


def _to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def _first_ms_from(t: float) -> int:
    """The smallest whole millisecond ``m`` with ``m / 1000 >= t``, compared as returned."""
    if math.isnan(t):
        raise ValueError("range bound is NaN")
    if t * 1000 <= _NEVER:
        return _NEVER
    if t * 1000 >= _FOREVER:
        return _FOREVER
    m = math.ceil(t * 1000)
    # t * 1000 is rounded; settle on the exact edge as the caller will see it.
    while m / 1000 < t:
        m += 1
    while (m - 1) / 1000 >= t:
        m -= 1
    return m


def _last_ms_to(t: float) -> int:
    """The largest whole millisecond ``m`` with ``m / 1000 <= t``, compared as returned."""
    if math.isnan(t):
        raise ValueError("range bound is NaN")
    if t * 1000 <= _NEVER:
        return _NEVER
    if t * 1000 >= _FOREVER:
        return _FOREVER
    m = math.floor(t * 1000)
    while m / 1000 > t:
        m -= 1
    while (m + 1) / 1000 <= t:
        m += 1
    return m


def _label_value(labels: Labels, name: str) -> str:
    for key, value in labels:
        if key == name:
            return value
    return ""


def _with_name(name: str, labels: Labels) -> Labels:
    # One ("__name__", name) pair per name, shared by its series' label sets.
    pair = _NAME_PAIRS.get(name)
    if pair is None:
        pair = _NAME_PAIRS.setdefault(name, (_NAME_LABEL, name))
    at = bisect_left(labels, pair)
    return (*labels[:at], pair, *labels[at:])


class MemoryStore:
    """Holds what collectors published, and serves it to the exposition and the evaluator.

    Each source (one collector of one target) replaces its own snapshot on every cycle, so a
    series that a source stops reporting (a statement leaving the top K, a dropped table)
    disappears from the exposition at once; its history gets a Prometheus stale marker at
    that moment, so the evaluator stops seeing it too. History is kept for ``retention``
    seconds behind the newest publish time, at 8 bytes a point for a series stamped with its
    source's publish times (see ``buffers``), 12 for one that is not.

    Timestamps are kept to the millisecond. Within a series points must arrive in time
    order: an older point is dropped and one in the same millisecond replaces the last.

    The series of names nobody reads over time can keep only what instant reads need (see
    ``set_retention``); by default every series keeps its whole window.
    """

    def __init__(self, *, retention: float = 3600.0) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, MetricSpec] = {}
        self._sources: dict[str, _Snapshot] = {}
        # Outlive their source's snapshot: a source that comes back after clear() continues
        # its timeline, so its series stay aligned to it. Dropped once spent and sourceless.
        self._timelines: dict[str, Timeline] = {}
        self._by_name: dict[str, dict[Labels, SeriesHistory]] = {}
        self._series_total = 0
        self._retention_ms = self._checked_retention(retention)
        # The names whose series keep the whole window (None: every name); the others keep
        # only their points of the last ``_recent_ms`` and the one before.
        self._full: frozenset[str] | None = None
        self._recent_ms = self._checked_retention(RECENT)
        self._now_ms = _NEVER
        # Only ever moves forward, so widening the retention never resurrects dropped points.
        self._horizon_ms = _NEVER
        # Series no current snapshot holds: the only ones a sweep may remove.
        self._orphans: set[SeriesHistory] = set()
        self._appends_since_sweep = 0
        # Which series of one name pass a set of label matchers, valid while the name's
        # generation (bumped whenever one of its series appears or goes) is unchanged.
        self._generation = 0
        self._name_generation: dict[str, int] = {}
        self._match_cache: dict[tuple[str, frozenset[LabelMatcher]],
                                tuple[int, list[SeriesHistory]]] = {}
        # The current snapshots in the text format, rendered by each publish (see exposition).
        self.exposition = Exposition()

    @property
    def retention(self) -> float:
        """Seconds of history kept behind the newest publish time."""
        return self._retention_ms / 1000

    def set_retention(self, seconds: float, *, full: Collection[str] | None = None,
                      recent: float = RECENT) -> None:
        """Keep ``seconds`` of history from now on; a shorter window frees memory lazily.

        ``full``: only the series of these metric names keep every point of the window (the
        names something reads over time: a range, a subquery, an offset); every other series
        keeps only what an instant read at most ``recent`` seconds before the newest time the
        store was given (a sample's or a publish's) needs, and answers such a read exactly as
        it would with its whole window. A name that joins ``full`` keeps its points from then
        on; one that leaves it drops them lazily; a wider ``recent`` holds from then on too
        (points the narrower one dropped are gone). None: every name keeps the whole window.
        """
        retention_ms = self._checked_retention(seconds)
        recent_ms = self._checked_retention(recent)
        names = None if full is None else frozenset(full)
        with self._lock:
            self._retention_ms = retention_ms
            self._advance(self._now_ms)
            if names != self._full or recent_ms != self._recent_ms:
                self._full, self._recent_ms = names, recent_ms
                for name, family in self._by_name.items():
                    kept = self._recent_of(name)
                    for hist in family.values():
                        hist.recent_ms = kept

    def register(self, specs: Iterable[MetricSpec]) -> None:
        """Declare metric families so they are described even before their first sample."""
        with self._lock:
            for spec in specs:
                known = self._specs.get(spec.name)
                if known is not None and known != spec:
                    raise ValueError(f"metric {spec.name} declared twice with different meaning")
                self._specs[spec.name] = spec
                if known is None:
                    self.exposition.declare(spec)

    def specs(self) -> list[MetricSpec]:
        """Every declared metric family, sorted by name."""
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.name)

    def publish(self, source: str, samples: Iterable[Sample], now: float, *,
                stamped: bool = False) -> None:
        """Replace ``source``'s snapshot with ``samples`` and append them to history.

        Series the previous snapshot had and this one lacks get a stale marker at ``now``.
        ``stamped``: the exposition shows these samples with the time they were collected,
        so a scraper sees each collection once, at its own time (``irate`` stays right when
        scrapes are more frequent than collections).
        """
        batch = tuple(samples)
        # Rendered here, in the publishing thread and outside the lock: a scrape only joins.
        chunks = self.exposition.render(source, batch, stamped)
        with self._lock:
            self._replace(source, batch, _to_ms(now), stamped, chunks)

    def _replace(self, source: str, batch: tuple[Sample, ...], now_ms: int, stamped: bool,
                 chunks: Mapping[str, Chunk]) -> None:
        """``publish``'s work under the lock, ``chunks`` its exposition."""
        undeclared = {s.name for s in batch}.difference(self._specs)
        if undeclared:
            raise KeyError(f"sample of undeclared metric {min(undeclared)}")
        self._advance(now_ms)
        horizon = self._horizon_ms
        by_name = self._by_name
        owned: set[SeriesHistory] = set()
        timeline = self._timelines.get(source)
        if timeline is None:
            timeline = self._timelines[source] = Timeline(shared=True)
        # A batch mostly shares one timestamp: convert it once, and add it to the source's
        # timeline once.
        last_ts = math.nan
        t_ms = 0
        shared: Timeline | None = None
        for sample in batch:
            name = sample.name
            family = by_name.get(name)
            hist = None if family is None else family.get(sample.labels)
            if hist is None:
                hist = self._new_series(name, sample.labels)
            if sample.timestamp != last_ts:
                last_ts = sample.timestamp
                t_ms = _to_ms(last_ts)
                shared = timeline if timeline.add(t_ms, horizon) else None
            hist.append(t_ms, sample.value, horizon, shared)
            owned.add(hist)
        previous = self._sources.get(source)
        if previous is not None and previous.series is not None:
            # The source published changes before: its series stop carrying on alone.
            for hist in previous.held():
                hist.release(horizon, now_ms)
        self._sources[source] = _Snapshot(batch, owned, stamped)
        self.exposition.put(source, stamped, chunks)
        self._hand_over(set() if previous is None else previous.owned_set(), owned, now_ms,
                        timeline)
        self._appends_since_sweep += len(batch)
        if self._appends_since_sweep >= max(len(self._orphans), _SWEEP_MIN_APPENDS):
            self._sweep()

    def publish_changes(self, source: str, changes: Changes, now: float, *,
                        stamped: bool = False, full: bool = False) -> None:
        """Change ``source``'s snapshot by ``changes`` (see ``Changes``), all stamped ``now``.

        The series that did not change carry on with their value: they cost nothing here,
        and their points at ``now`` are not written (a read fills them in its copy, see
        ``SeriesHistory.readable_end``), unless the series moves off its source's timeline
        or changes. ``full``: ``changes``
        holds the whole snapshot (a first publish, or after a failed cycle or ``clear``);
        without it the source's current snapshot must be one ``publish_changes`` made.
        """
        changed = changes.changed
        if any(sample.timestamp != now for sample in changed):
            raise ValueError(f"{source}: a published change is not stamped with its publish time")
        with self._lock:
            previous = self._sources.get(source)
            continues = previous is not None and previous.series is not None
        if not full and not continues:
            raise ValueError(f"{source}: changes published without a snapshot to change")
        chunks = self.exposition.render_changes(source, changes, now, stamped, full=full)
        now_ms = _to_ms(now)
        with self._lock:
            if full:
                # The whole snapshot, rendered once (as changes): replace, then hold it.
                self._replace(source, tuple(changed), now_ms, stamped, chunks)
                self._hold_all(source, now)
            else:
                self._apply_changes(source, changes, now, now_ms)
                self.exposition.put(source, stamped, chunks)

    def _hold_all(self, source: str, now: float) -> None:
        """Turn ``source``'s snapshot, just published whole, into one that changes."""
        snapshot = self._sources[source]
        timeline = self._timelines[source]
        by_name = self._by_name
        series = {}
        for sample in snapshot.samples:
            hist = by_name[sample.name][sample.labels]
            hist.hold(timeline, sample.value)
            series[hist] = sample.value
        # Its series say which it holds: a set of 25,000 beside them is 2 MB at top_k 5000.
        snapshot.series, snapshot.at, snapshot.owned = series, now, None

    def _apply_changes(self, source: str, changes: Changes, now: float, now_ms: int) -> None:
        changed, removed = changes
        undeclared = {s.name for s in changed}.difference(self._specs)
        if undeclared:
            raise KeyError(f"sample of undeclared metric {min(undeclared)}")
        snapshot = self._sources[source]
        series = snapshot.series
        assert series is not None
        self._advance(now_ms)
        horizon = self._horizon_ms
        timeline = self._timelines[source]
        # Every series of the source stands at this entry, changed or not.
        shared = timeline if timeline.add(now_ms, horizon) else None
        for sample in changed:
            name, labels = sample.name, sample.labels
            hist = self._series(name, labels)
            if hist is None or hist not in series:
                if hist is None:
                    hist = self._new_series(name, labels)
                # Not in ``series``, so not this source's until now.
                hist.owners += 1
                self._orphans.discard(hist)
            elif shared is not None and hist.change_held(sample.value, horizon):
                series[hist] = sample.value
                continue
            hist.append(now_ms, sample.value, horizon, shared)
            hist.hold(timeline, sample.value)
            series[hist] = sample.value
        for name, labels in removed:
            hist = self._series(name, labels)
            if hist is None or series.pop(hist, None) is None:
                continue
            hist.release(horizon, now_ms)
            hist.owners -= 1
            if hist.owners == 0:
                hist.mark_stale(now_ms, horizon, timeline)
                self._orphans.add(hist)
        snapshot.batch, snapshot.at = None, now
        self._appends_since_sweep += len(changed)
        if self._appends_since_sweep >= max(len(self._orphans), _SWEEP_MIN_APPENDS):
            self._sweep()

    def clear(self, source: str, now: float | None = None) -> None:
        """Forget ``source``'s snapshot and mark its series stale.

        The marker goes at ``now``, or without it at the newest publish time the store saw.
        """
        with self._lock:
            snapshot = self._sources.pop(source, None)
            if snapshot is None:
                return
            self.exposition.drop(source)
            if snapshot.series is not None:
                # Its series stood at every publish of the source so far.
                for hist in snapshot.held():
                    hist.release(self._horizon_ms)
            if now is not None:
                self._advance(_to_ms(now))
            at_ms = self._now_ms if now is None else _to_ms(now)
            self._hand_over(snapshot.owned_set(), set(), at_ms, self._timelines.get(source))

    def current(self) -> Iterator[tuple[MetricSpec, list[Sample]]]:
        """The latest samples of every source, grouped by metric family."""
        with self._lock:
            grouped: dict[str, list[Sample]] = {name: [] for name in self._specs}
            for snapshot in self._sources.values():
                for sample in snapshot.samples:
                    grouped[sample.name].append(sample)
            specs = dict(self._specs)
        for name in sorted(grouped):
            yield specs[name], grouped[name]

    def exposed(self) -> Iterator[tuple[MetricSpec, list[Sample], list[Sample]]]:
        """Like ``current``, each family's samples split into stamped and unstamped ones."""
        with self._lock:
            grouped: dict[str, tuple[list[Sample], list[Sample]]] = {
                name: ([], []) for name in self._specs}
            for snapshot in self._sources.values():
                at = 0 if snapshot.stamped else 1
                for sample in snapshot.samples:
                    grouped[sample.name][at].append(sample)
            specs = dict(self._specs)
        for name in sorted(grouped):
            stamped, unstamped = grouped[name]
            yield specs[name], stamped, unstamped

    def history(self, name: str, labels: Labels) -> list[SeriesPoint]:
        """Stored points of one series, oldest first, stale markers included."""
        with self._lock:
            hist = self._series(name, labels)
            if hist is None:
                return []
            hist.expire(self._horizon_ms)
            found = hist.window(TimeRange(_NEVER, _FOREVER))
        if found is None:
            return []
        return [SeriesPoint(t, v) for t, v in zip(*found, strict=True)]

    def source_size(self, source: str) -> int:
        """How many series ``source``'s current snapshot holds."""
        with self._lock:
            snapshot = self._sources.get(source)
            if snapshot is None:
                return 0
            return len(snapshot.series) if snapshot.series is not None \
                else len(snapshot.owned_set())

    def series_count(self) -> int:
        """How many series the store holds."""
        with self._lock:
            return self._series_total

    def select(self, matchers: Sequence[LabelMatcher], start: float, end: float) -> list[Series]:
        """Series matching every matcher, with their points in ``[start, end]``.

        Points include stale markers. Series without points in the range are left out.
        The values are copies (an ``array('d')``, 8 bytes a point, not a float object each:
        a [10m] read of 5,000 series would otherwise hold 60 MB at once), and where a series
        stood still, its held value is not copied point by point (``HeldValues``); the
        timestamps of the series that share a timeline and window are one list: read them,
        don't change them.
        """
        lo = _first_ms_from(start)
        hi = _last_ms_to(end)
        found: list[Series] = []
        with self._lock:
            horizon = self._horizon_ms
            lo = max(lo, horizon)
            if lo > hi:
                return found
            query = TimeRange(lo, hi)
            append = found.append
            # The series of a family mostly share their source's timeline: expire it once
            # (expiring it again to the same horizon would change nothing), then do per series
            # what hist.expire and hist.window do.
            expired: Timeline | None = None
            # (timeline, window) → its seconds there, one list shared by the window's series.
            stamps_of: dict[tuple[Timeline, int, int], list[float]] = {}
            values: Sequence[float]
            for hist in self._matching(matchers):
                # A held series' value stands unwritten from its last written point to ``end``.
                end = hist.readable_end(horizon) if hist.held is not None \
                    else hist.first + hist.n
                first = hist.first
                if end == first:
                    continue
                timeline = hist.timeline
                if timeline is not expired:
                    timeline.expire(horizon)
                    expired = timeline
                if timeline.dropped + timeline.start >= end:
                    hist.expire(horizon)  # all its points expired: let it drop them
                    continue
                at, seconds = query.entries(timeline)
                window_lo = at if at > first else first
                window_hi = at + len(seconds)
                if window_hi > end:
                    window_hi = end
                if window_lo >= window_hi:
                    continue
                if hist.gap < window_lo:
                    key = (timeline, window_lo, window_hi)
                    stamps = stamps_of.get(key)
                    if stamps is None:
                        stamps = stamps_of[key] = seconds[window_lo - at:window_hi - at]
                    written = first + hist.n
                    if window_hi <= written:
                        values = hist.values[window_lo - first:window_hi - first]
                    else:
                        values = HeldValues(hist.values[window_lo - first:written - first],
                                            hist.held_value,
                                            window_hi - max(window_lo, written))
                else:
                    window = hist.window(query)
                    if window is None:
                        continue
                    stamps, values = window
                labels = hist.full_labels
                if labels is None:
                    labels = hist.full_labels = _with_name(hist.name, hist.labels)
                append(Series(labels, stamps, values))
        return found

    @staticmethod
    def _checked_retention(seconds: float) -> int:
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"retention must be a positive number of seconds, not {seconds}")
        return max(1, _to_ms(seconds))

    def _advance(self, now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        if self._now_ms > _NEVER:
            self._horizon_ms = max(self._horizon_ms, self._now_ms - self._retention_ms)

    def _series(self, name: str, labels: Labels) -> SeriesHistory | None:
        family = self._by_name.get(name)
        return None if family is None else family.get(labels)

    def _new_series(self, name: str, labels: Labels) -> SeriesHistory:
        if any(key == _NAME_LABEL for key, _ in labels):
            raise ValueError(f"sample of {name} carries a {_NAME_LABEL} label")
        hist = SeriesHistory(name, labels)
        hist.recent_ms = self._recent_of(name)
        self._by_name.setdefault(name, {})[labels] = hist
        self._series_total += 1
        # Owned by nobody until the publish that created it hands it over.
        self._orphans.add(hist)
        self._touch(name)
        return hist

    def _recent_of(self, name: str) -> int | None:
        """What a series of ``name`` keeps: None, its whole window, or so many milliseconds."""
        full = self._full
        return None if full is None or name in full else self._recent_ms

    def _hand_over(self, old: set[SeriesHistory], new: set[SeriesHistory], now_ms: int,
                   timeline: Timeline | None) -> None:
        for hist in new:
            if hist not in old:
                hist.owners += 1
                self._orphans.discard(hist)
        horizon = self._horizon_ms
        if timeline is not None and old and not new:
            # The source now holds no series, so an entry for the markers costs nobody a gap,
            # and its series can take their marker without leaving the timeline.
            timeline.add(now_ms, horizon)
        for hist in old:
            if hist not in new:
                hist.owners -= 1
                if hist.owners == 0:
                    hist.mark_stale(now_ms, horizon, timeline)
                    self._orphans.add(hist)

    def _sweep(self) -> None:
        # Only orphans can die, and a sweep runs after at least as many appends as there are
        # orphans, so its cost is amortised over the appends.
        self._appends_since_sweep = 0
        horizon = self._horizon_ms
        gone = []
        for hist in self._orphans:
            hist.expire(horizon)
            if hist.is_empty():
                gone.append(hist)
        for hist in gone:
            self._orphans.discard(hist)
            family = self._by_name[hist.name]
            del family[hist.labels]
            self._series_total -= 1
            self._touch(hist.name)
            if not family:
                del self._by_name[hist.name]
                del self._name_generation[hist.name]
        if sys.getsizeof(self._orphans) > _SPARSE_SET_BYTES + 64 * len(self._orphans):
            # Every series of a source's first publish passes through it (25,000 at top_k
            # 5000), and a set never shrinks by itself: 2 MB of empty table otherwise.
            self._orphans = set(self._orphans)
        spent = []
        for source, timeline in self._timelines.items():
            if source not in self._sources:
                timeline.expire(horizon)
                if timeline.is_spent():
                    spent.append(source)
        for source in spent:
            del self._timelines[source]
        if gone:
            generations = self._name_generation
            self._match_cache = {key: hit for key, hit in self._match_cache.items()
                                 if generations.get(key[0]) == hit[0]}

    def _touch(self, name: str) -> None:
        self._generation += 1
        self._name_generation[name] = self._generation

    def _matching(self, matchers: Sequence[LabelMatcher]) -> Iterator[SeriesHistory]:
        name: str | None = None
        on_name: list[LabelMatcher] = []
        on_labels: list[LabelMatcher] = []
        for matcher in matchers:
            if matcher.name != _NAME_LABEL:
                on_labels.append(matcher)
            elif matcher.op is MatchOp.EQUAL and name is None:
                name = matcher.value
            else:
                on_name.append(matcher)
        names = list(self._by_name) if name is None else [name]
        label_set = frozenset(on_labels)
        for candidate in names:
            if candidate in self._by_name and all(m.matches(candidate) for m in on_name):
                yield from self._matching_in(candidate, label_set)

    def _matching_in(self, name: str, matchers: frozenset[LabelMatcher]) -> Iterable[SeriesHistory]:
        family = self._by_name[name]
        if not matchers:
            return family.values()
        generation = self._name_generation[name]
        key = (name, matchers)
        hit = self._match_cache.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        found = [hist for labels, hist in family.items()
                 if all(m.matches(_label_value(labels, m.name)) for m in matchers)]
        if len(self._match_cache) >= _MATCH_CACHE_SIZE:
            # Oldest entry first: dicts keep insertion order.
            del self._match_cache[next(iter(self._match_cache))]
        self._match_cache[key] = (generation, found)
        return found
