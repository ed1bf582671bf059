"""Compact point buffers: timestamps shared per source, values per series.

A collector stamps its whole batch with one time, so the thousands of series a source
publishes together share their timestamps. Each source keeps them once, in a ``Timeline``;
each series keeps only its values, aligned to that timeline: 8 bytes a point instead of 12.
A series that does not fit (stamped off its source's time, published by two sources, or
carrying the value used for gaps) moves to a timeline of its own and costs 12 bytes a point,
as every series did before.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right

from piggywatch.store.samples import Labels
from piggywatch.store.series import STALE_NAN

_INT32_MAX = 2**31 - 1
# Offsets are rebased once the oldest live one passes ~12.4 days, so a timeline whose
# entries span less than that never needs more than 32 bits, however long the daemon runs.
_REBASE_AFTER = 2**30
# A timeline drops its expired entries in bulk once a sixty-fourth of it is dead; a series'
# buffer drops them when full, if that frees a sixty-fourth of it, else grows. Amortised
# O(1) either way: a compaction moving n live entries comes after at least n / 63 expiries,
# and moving them is one memmove.
_COMPACT_DIVISOR = 64
_COMPACT_MIN_DEAD = 8
# Room a series' buffer keeps beyond the points the retention window holds, for expired
# ones to pile up in between compactions: memory is the constraint (bench/store_bench.py).
_HEADROOM = 4
# Buffers up to 512 bytes come from pymalloc's pools, which are not given back while any
# block of their arena lives: series growing through them left 5-7 MiB of empty pools behind
# (bench/store_bench.py). A series whose window holds more points starts just past them.
_PAST_SMALL_BLOCKS = 512 // 8 + 1
# What fills a series' values where its timeline has an entry the series was not published
# at. A signalling NaN next to Prometheus' stale marker (0x7FF0000000000002): arithmetic
# only ever makes quiet NaNs, and a sample carrying this exact value is stored on a timeline
# of its own, where nothing is read as a gap. Never returned.
_ABSENT_BITS = 0x7FF0000000000003
_ABSENT: float = struct.unpack("<d", struct.pack("<Q", _ABSENT_BITS))[0]
_ABSENT_BYTES = struct.pack("<Q", _ABSENT_BITS)
# An absent value costs 8 bytes; a timeline of its own costs about 160 bytes plus 4 bytes a
# point. A series fills gaps while its absent values stay under half its points (plus this),
# so that it never costs much more than the 12 bytes a point it would on its own.
_GAP_ALLOWANCE = 16


def _is_absent(value: float) -> bool:
    # value != value first: only NaNs pay for the bit comparison.
    return value != value and struct.pack("<d", value) == _ABSENT_BYTES


class Timeline:
    """Millisecond timestamps, strictly increasing, live from the retention horizon.

    Entries are addressed by absolute index, which compaction does not change (``dropped``
    counts the entries compacted away), so series aligned to a timeline never need to be
    told when it compacts or rebases.
    """

    __slots__ = ("base", "dropped", "shared", "start", "times")

    def __init__(self, *, shared: bool) -> None:
        # Whether several series may be aligned to it (a source's), or one owns it.
        self.shared = shared
        self.base = 0
        self.times: array[int] = array("i")
        # Index in ``times`` of the oldest live entry; the ones before it are expired.
        self.start = 0
        self.dropped = 0

    def end(self) -> int:
        """Absolute index just past the newest entry."""
        return self.dropped + len(self.times)

    def live_from(self) -> int:
        """Absolute index of the oldest live entry (``end()`` when none is)."""
        return self.dropped + self.start

    def at(self, index: int) -> int:
        """Milliseconds of the entry at absolute ``index``."""
        return self.base + self.times[index - self.dropped]

    def ends_at(self, t_ms: int) -> bool:
        """Whether the newest entry is live and stamped ``t_ms``."""
        times = self.times
        return self.start < len(times) and self.base + times[-1] == t_ms

    def is_spent(self) -> bool:
        """Whether no entry is live."""
        return self.start == len(self.times)

    def add(self, t_ms: int, horizon_ms: int) -> bool:
        """Make ``t_ms`` the newest entry unless a newer one exists; whether it now is."""
        if t_ms < horizon_ms:
            return False
        self.expire(horizon_ms)
        times = self.times
        if self.start < len(times):
            last = self.base + times[-1]
            if t_ms <= last:
                return t_ms == last
        else:
            # Empty: the cheapest moment to move the base.
            self.base = t_ms
        offset = t_ms - self.base
        if offset > _INT32_MAX and times.typecode == "i":
            self._compact()
            self._rebase()
            offset = t_ms - self.base
            if offset > _INT32_MAX:
                # Live entries span more than 24.8 days (a very long retention).
                self.times = array("q", self.times)
        self.times.append(offset)
        return True

    def expire(self, horizon_ms: int) -> None:
        """Forget entries older than ``horizon_ms``."""
        times = self.times
        start = self.start
        n = len(times)
        cut = horizon_ms - self.base
        if start == n or times[start] >= cut:
            return
        start = bisect_left(times, cut, start, n)
        self.start = start
        if start == n:
            self.dropped += n
            del self.times[:]
            self.start = 0
        elif start >= _COMPACT_MIN_DEAD and start * _COMPACT_DIVISOR >= n:
            self._compact()

    def expected(self, horizon_ms: int) -> int:
        """How many entries the window from ``horizon_ms`` holds at the pace seen so far."""
        times = self.times
        live = len(times) - self.start
        if live < 2:
            return live
        # Entries strictly increase, so this is positive.
        spanned = times[-1] - times[self.start]
        window = self.base + times[-1] - horizon_ms
        return max(live, window * (live - 1) // spanned + 1)

    def recent_from(self, recent_ms: int) -> int:
        """Absolute index of the oldest live entry at most ``recent_ms`` older than the
        newest (``end()`` when none is live)."""
        times = self.times
        start = self.start
        if start == len(times):
            return self.end()
        return self.dropped + bisect_left(times, times[-1] - recent_ms, start)

    def span(self, lo_ms: int, hi_ms: int) -> tuple[int, list[float]]:
        """Absolute index of the first live entry in ``[lo_ms, hi_ms]``, and those entries
        in seconds, as the caller will see them."""
        base = self.base
        times = self.times
        i = bisect_left(times, lo_ms - base, self.start)
        j = bisect_right(times, hi_ms - base, i)
        return self.dropped + i, [(base + t) / 1000 for t in times[i:j]]

    def _compact(self) -> None:
        start = self.start
        if start:
            del self.times[:start]
            self.dropped += start
            self.start = 0
        if self.times and self.times[0] > _REBASE_AFTER:
            self._rebase()

    def _rebase(self) -> None:
        # Runs in Python over the live entries, which is why it waits for the offsets to
        # grow large instead of running on every compaction.
        times = self.times
        if self.start or not times:
            return
        shift = times[0]
        code = "i" if times[-1] - shift <= _INT32_MAX else "q"
        self.times = array(code, [t - shift for t in times])
        self.base += shift


class TimeRange:
    """One query's ``[lo_ms, hi_ms]``, converted to seconds once per timeline, not per series.

    Remembers the last timeline asked about: the series of one family mostly come from one
    source, in the order they were created.
    """

    __slots__ = ("_first", "_seconds", "_timeline", "hi_ms", "lo_ms")

    def __init__(self, lo_ms: int, hi_ms: int) -> None:
        self.lo_ms = lo_ms
        self.hi_ms = hi_ms
        self._timeline: Timeline | None = None
        self._first = 0
        self._seconds: list[float] = []

    def entries(self, timeline: Timeline) -> tuple[int, list[float]]:
        """``timeline.span`` over this range; the list is shared, to be sliced, not changed."""
        if timeline is not self._timeline:
            self._first, self._seconds = timeline.span(self.lo_ms, self.hi_ms)
            self._timeline = timeline
        return self._first, self._seconds


class SeriesHistory:
    """One series: its identity, and its values aligned to a timeline from index ``first``.

    ``values[k]`` for ``k < n`` is the point at the timeline's absolute index ``first + k``;
    where the series was not published at an entry it holds the absent value, never last.
    The buffer is sized by the store, not by ``array.append`` (which keeps 6% or more spare),
    from how many points the retention window holds at the pace seen so far; expired points
    are dropped in bulk when it is full, so expiry is a bisect on the timeline, not a shift
    of the buffer on every append.

    A series whose history nothing reads (``recent_ms`` set, see ``MemoryStore.set_retention``)
    keeps only what an instant read needs: its points of the last ``recent_ms`` before its
    timeline's newest entry, and the newest one before those. Its buffer grows only as
    needed, and the older points are dropped like expired ones.
    """

    __slots__ = ("first", "full_labels", "gap", "held", "held_value", "labels", "n", "name",
                 "owners", "recent_ms", "timeline", "values")

    def __init__(self, name: str, labels: Labels) -> None:
        self.name = name
        self.labels = labels
        self.timeline = _NOWHERE
        self.first = 0
        # Past ``n`` the buffer is spare room; its content there means nothing.
        self.values: array[float] = array("d")
        self.n = 0
        # Absolute index of the newest absent value, or -1: reads skip the search for
        # absent values in any window that starts after it, which is nearly all of them.
        self.gap = -1
        # How many sources' current snapshots hold this series: stale once none does.
        self.owners = 0
        self.full_labels: Labels | None = None
        # Set while the series' source publishes changes only (``MemoryStore.publish_changes``):
        # its value ``held_value`` carries on at every entry of the source's timeline ``held``
        # after its last point. Those points are written only when the series is appended to
        # or leaves that timeline (``catch_up``); a read fills them in its copy
        # (``readable_end``), so a series that does not change costs nothing a cycle.
        self.held: Timeline | None = None
        self.held_value = 0.0
        # None: every point of the retention window is kept (see the class docstring).
        self.recent_ms: int | None = None

    def is_empty(self) -> bool:
        return not self.n

    def last_ms(self) -> int:
        return self.timeline.at(self.first + self.n - 1)

    def append(self, t_ms: int, value: float, horizon_ms: int, shared: Timeline | None) -> None:
        """Add a point; an out-of-order one is dropped, a same-millisecond one replaces.

        ``shared`` is the publishing source's timeline when its newest entry is ``t_ms``.
        """
        if self.held is not None:
            # What it held stands at the entries before this one; a newer value published
            # by its source carries on (not one dropped as late, nor another source's).
            self.catch_up(horizon_ms, before_ms=t_ms)
            if shared is self.held:
                self.held_value = value
        n = self.n
        if self.timeline is shared and n < len(self.values) and shared is not None \
                and shared.dropped + len(shared.times) == self.first + n + 1 \
                and (value == value or not _is_absent(value)):
            # Nearly every append: the entry just after this series' last point, and room
            # for it. Points that expired meanwhile go at the next compaction.
            self.values[n] = value
            self.n = n + 1
            return
        if t_ms < horizon_ms:
            return
        self.expire(horizon_ms)
        n = self.n
        if not n:
            self._restart(t_ms, value, horizon_ms, shared)
            return
        timeline = self.timeline
        end = self.first + n
        last = timeline.at(end - 1)
        if t_ms <= last:
            # Points must stay sorted for bisect; Prometheus rejects these too.
            if t_ms == last:
                if timeline.shared and _is_absent(value):
                    self._own_timeline()
                self.values[self.n - 1] = value
            return
        if timeline is shared and (value == value or not _is_absent(value)):
            gap = shared.end() - 1 - end
            if gap == 0:
                if n == len(self.values):
                    self._make_room(1, horizon_ms)
                    n = self.n
                self.values[n] = value
                self.n = n + 1
                return
            # Counted only when a gap is to be filled, which is rare: a series that
            # misses its source's entries every time (several stamps in one batch) soon
            # moves to a timeline of its own instead of piling up absent values.
            absent = 0 if self.gap < self.first else \
                self.values[:n].tobytes().count(_ABSENT_BYTES)
            if 2 * (absent + gap) <= n - absent + 2 * _GAP_ALLOWANCE:
                if n + gap >= len(self.values):
                    self._make_room(gap + 1, horizon_ms)
                    n = self.n
                self.values[n:n + gap] = array("d", [_ABSENT]) * gap
                self.values[n + gap] = value
                self.n = n + gap + 1
                self.gap = end + gap - 1
                return
        if timeline.shared:
            self._own_timeline()
        self.timeline.add(t_ms, horizon_ms)
        self._push(value, horizon_ms)

    def mark_stale(self, at_ms: int, horizon_ms: int, source: Timeline | None) -> None:
        """Append the stale marker at ``at_ms``, or just after the last point if that is later.

        ``source`` is the timeline of the source letting the series go, if it has one.
        """
        # A source letting a held series go releases it first (up to the entries it was
        # published at); this is for one that did not.
        self.release(horizon_ms, at_ms)
        self.expire(horizon_ms)
        if self.n:
            at = max(at_ms, self.last_ms() + 1)
            shared = source if source is not None and source.ends_at(at) else None
            self.append(at, STALE_NAN, horizon_ms, shared)

    def expire(self, horizon_ms: int) -> None:
        """Forget the points once all are older than ``horizon_ms``; reads skip older ones."""
        if self.held is not None:
            self.catch_up(horizon_ms)
        if not self.n:
            return
        timeline = self.timeline
        timeline.expire(horizon_ms)
        if timeline.live_from() >= self.first + self.n:
            self.n = 0
            del self.values[:]

    def window(self, query: TimeRange) -> tuple[list[float], list[float]] | None:
        """Copies of the points in the range, timestamps in seconds; None if none.

        A held series must be caught up first (the store does it; this needs no horizon).
        """
        if not self.n:
            return None
        at, seconds = query.entries(self.timeline)
        first = self.first
        lo = max(at, first)
        hi = min(at + len(seconds), first + self.n)
        if lo >= hi:
            return None
        # Plain lists: they compare equal to what tests and rule unit tests build.
        stamps = seconds[lo - at:hi - at]
        found = self.values[lo - first:hi - first].tolist()
        if self.gap < lo:
            return stamps, found
        kept = [k for k, value in enumerate(found) if value == value or not _is_absent(value)]
        if not kept:
            return None
        return [stamps[k] for k in kept], [found[k] for k in kept]

    def hold(self, timeline: Timeline, value: float) -> None:
        """From now on ``value`` carries on at every later entry of ``timeline`` (the
        publishing source's), until the next append or ``release``."""
        self.held = timeline
        self.held_value = value

    def release(self, horizon_ms: int, before_ms: int | None = None) -> None:
        """Stop holding: write the held value at the entries before ``before_ms`` (all of
        them without it) first."""
        if self.held is not None:
            self.catch_up(horizon_ms, before_ms)
            self.held = None

    def readable_end(self, horizon_ms: int) -> int:
        """Absolute index just past the newest point a read finds.

        A series held on its source's timeline (the common case) is not caught up: its held
        value stands, unwritten, at the entries from ``first + n`` to the returned index, and
        a read fills them in its copy. A series that nothing changes then keeps no more than
        the points it had when it last changed, however often rules read it: 5,000 idle
        statements read over [10m] would otherwise each hold a full window of one value.
        Whatever ``catch_up`` would leave out of the window, this leaves out too (and frees
        the buffer when no written point is left). Any other held series is caught up.
        """
        held = self.held
        if held is None:
            return self.first + self.n
        if held is not self.timeline or self.gap >= self.first:
            self.catch_up(horizon_ms)
            return self.first + self.n
        held.expire(horizon_ms)
        end = held.end()
        live = self._held_from(held, end)
        if self.first + self.n < live:
            # Every point it had is expired or superseded, as catch_up would find.
            self.first, self.n, self.gap = live, 0, -1
            del self.values[:]
        return end

    def catch_up(self, horizon_ms: int, before_ms: int | None = None) -> None:
        """Write the held value at the held timeline's live entries after the last point and
        before ``before_ms`` (all of them without it)."""
        held = self.held
        if held is None:
            return
        held.expire(horizon_ms)
        end = held.end()
        if before_ms is not None and end > held.live_from() and held.at(end - 1) >= before_ms:
            end = held.dropped + bisect_left(held.times, before_ms - held.base, held.start)
        value = self.held_value
        if self.timeline is not held:
            own = self.timeline
            own.expire(horizon_ms)
            if own.shared and own.live_from() < self.first + self.n:
                # On another source's timeline (that source published it too): the held
                # entries are not that source's to add. Its points move to one of its own.
                self._own_timeline()
                own = self.timeline
            if own.live_from() < self.first + self.n:
                # Moved to a timeline of its own meanwhile (rare): point by point.
                last = self.last_ms()
                for index in range(held.live_from(), end):
                    t_ms = held.at(index)
                    if t_ms > last and own.add(t_ms, horizon_ms):
                        self._push(value, horizon_ms)
                return
            # Every point of its own expired (nothing published it for a retention):
            # rejoin the held timeline, as an empty series joins its source's.
            self.n = 0
            del self.values[:]
            self.timeline = held
            self.first = held.live_from()
            self.gap = -1
        start = self.first + self.n
        live = self._held_from(held, end)
        if start < live:
            # Every point it had is expired or superseded, as are the entries up to ``live``.
            self.first, self.n, start = live, 0, live
            self.gap = -1
        need = end - start
        if need <= 0:
            return
        if self.n + need > len(self.values):
            self._make_room(need, horizon_ms)
        n = self.n
        self.values[n:n + need] = array("d", [value]) * need
        self.n = n + need

    def change_held(self, value: float, horizon_ms: int) -> bool:
        """Held on its own timeline, whose newest entry is new: write the held value at the
        entries before that one and ``value`` at it, and hold ``value`` on. False (nothing
        done) when that does not fit: the caller appends instead.

        What ``catch_up`` and ``append`` would do together, in one step: a source that
        publishes changes calls it for each series that changed.
        """
        held = self.held
        if held is not self.timeline or held is None or (value != value and _is_absent(value)):
            return False
        end = held.dropped + len(held.times)
        start = self.first + self.n
        live = self._held_from(held, end)
        if start < live:
            # Every point it had is expired or superseded, as are the entries up to ``live``.
            self.first, self.n, start = live, 0, live
            self.gap = -1
        need = end - start
        if need <= 0:
            return False
        if self.n + need > len(self.values):
            self._make_room(need, horizon_ms)
        n = self.n
        values = self.values
        if need > 1:
            values[n:n + need - 1] = array("d", [self.held_value]) * (need - 1)
        values[n + need - 1] = value
        self.n = n + need
        self.held_value = value
        return True

    def _held_from(self, held: Timeline, end: int) -> int:
        """Where the held value, written up to (not at) ``end``, leaves no older point
        needed: the held timeline's oldest live entry, or for a series keeping only recent
        points, the newest of those entries before the recent ones if that is later."""
        live = held.live_from()
        if self.recent_ms is None:
            return live
        return max(live, min(held.recent_from(self.recent_ms), end) - 1)

    def _needed_from(self) -> int:
        """Absolute index of the oldest point a read may still need: the oldest live one, or
        for a series keeping only recent points, the newest one before the recent ones if
        that is later (an instant read of the recent past finds it or a newer point)."""
        timeline = self.timeline
        live = timeline.live_from()
        if self.recent_ms is None:
            return live
        first = self.first
        anchor = min(timeline.recent_from(self.recent_ms), first + self.n) - 1
        if self.gap >= anchor:
            # It may be an absent value (rare, see ``gap``): the point is the one before.
            values = self.values
            while anchor > first and _is_absent(values[anchor - first]):
                anchor -= 1
        return max(live, anchor)

    def _push(self, value: float, horizon_ms: int) -> None:
        if self.n == len(self.values):
            self._make_room(1, horizon_ms)
        self.values[self.n] = value
        self.n += 1

    def _make_room(self, need: int, horizon_ms: int) -> None:
        """Make room for ``need`` more values: drop the expired ones, or else grow the buffer.

        Sizes the buffer for what the retention window holds at the timeline's pace, plus
        room for expired points to pile up between compactions, but never more than twice the
        points held (or ``_PAST_SMALL_BLOCKS``), so that a series that turns out short-lived
        stays small. A compaction drops at least 1/64 of the buffer, so moving the live points
        costs O(1) an append, amortised.
        """
        values = self.values
        n = self.n
        capacity = len(values)
        dead = max(0, self._needed_from() - self.first)
        live = n - dead
        if dead * _COMPACT_DIVISOR >= capacity and live + need <= capacity \
                and 2 * (live + need) > capacity:
            values[:live] = values[dead:n]
        else:
            least = live + need
            # A series keeping only recent points holds twice them: a compaction (moving
            # them) then comes once per that many appends.
            target = 2 * least if self.recent_ms is not None else \
                self.timeline.expected(horizon_ms) + _HEADROOM
            # Never less than array.append would grow by, so that appends stay O(1)
            # amortised however wrong the pace is.
            capacity = max(least + (least >> 4) + _HEADROOM,
                           min(target, max(2 * least, _PAST_SMALL_BLOCKS)))
            grown = _ZERO * capacity
            grown[:live] = values[dead:n]
            self.values = grown
        self.first += dead
        self.n = live

    def _restart(self, t_ms: int, value: float, horizon_ms: int,
                 shared: Timeline | None) -> None:
        # Empty: the cheapest moment to (re)join the source's timeline.
        self.gap = -1
        if shared is not None and not _is_absent(value):
            self.timeline = shared
        elif self.timeline.shared:
            self.timeline = Timeline(shared=False)
        # On a timeline of its own every entry was this series' point, so all have expired.
        self.timeline.add(t_ms, horizon_ms)
        self.first = self.timeline.end() - 1
        self._push(value, horizon_ms)

    def _own_timeline(self) -> None:
        """Copy the live points, gaps left out, onto a timeline of this series' own."""
        timeline = self.timeline
        values = self.values
        first = self.first
        skip = max(0, timeline.live_from() - first)
        indices = [k for k in range(skip, self.n) if not _is_absent(values[k])]
        own = Timeline(shared=False)
        if not indices:
            # Nothing but absent values: an empty series on an empty timeline of its own.
            self.values, self.n, self.timeline, self.first, self.gap = array("d"), 0, own, 0, -1
            return
        base = own.base = timeline.at(first + indices[0])
        stamps = [timeline.at(first + k) - base for k in indices]
        own.times = array("i" if stamps[-1] <= _INT32_MAX else "q", stamps)
        self.values = array("d", [values[k] for k in indices])
        self.n = len(indices)
        self.timeline = own
        self.first = 0
        self.gap = -1


_ZERO = array("d", [0.0])
_NEVER_MS = -(2**63)
# The timeline of a series that never held a point: owned by nobody, so the first append
# replaces it.
_NOWHERE = Timeline(shared=True)
