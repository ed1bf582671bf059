"""Notification ids are derived from what they announce: a step redone after its leader died
between committing the notifications and saving the escalation gives the same ids, which
the outbox refuses (pending or finished); every legitimately different notification (the
next level, a repeat, a group update, a resolve, the next occurrence of the same incident)
gets an id of its own and is delivered.

Outboxes here really send, to a recording channel shared by every leader, so the counts are
what the receivers got after the outbox's dedup.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.rules.alerts import Alert, AlertEvent, AlertState, EventKind
from piggywatch.state import SQLiteState, StateLike, StateStore
from tests.support.notifiers import RecordingNotifier
from tests.support.state import away, failing, reopen
from tests.test_dispatcher import CONFIG, RECEIVERS, T0, Pipeline

HOUR = 3600.0


class Recorder(RecordingNotifier):
    """Every receiver's channel: records what it is sent, accepts everything."""

    def ids(self) -> list[str]:
        with self._lock:
            return [n.id for n in self.sent]


@contextmanager
def pipeline(state: StateLike) -> Iterator[Pipeline]:
    """A dispatcher with an unstarted outbox (what it took stays pending)."""
    p = Pipeline(state)
    try:
        yield p
    finally:
        p.close()


class Leader:
    """A dispatcher and its delivering outbox, as one leader runs them."""

    def __init__(self, state: StateLike, recorder: Recorder) -> None:
        settings = AlertingSettings.model_validate(yaml.safe_load(CONFIG))
        self.now = T0  # the outbox's clock follows the passes
        self.outbox = Outbox(state, dict.fromkeys(RECEIVERS, recorder), throttles={},
                             clock=lambda: self.now)
        self.outbox.start()
        self.dispatcher = Dispatcher(settings, self.outbox, state, clock=lambda: self.now)

    def run(self, at: float, *events: AlertEvent) -> None:
        for event in events:
            self.dispatcher.handle(event)
        self.now = at
        self.dispatcher.run_pass(at)
        self.settle()

    def tick(self, start: float, end: float, step: float = 60.0) -> None:
        at = start
        while at <= end:
            self.now = at
            self.dispatcher.run_pass(at)
            at += step
        self.settle()

    def settle(self) -> None:
        """Wait until the outbox sent everything it took."""
        deadline = time.monotonic() + 10.0
        while self.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.outbox.pending(), "the outbox did not deliver"

    def close(self) -> None:
        self.dispatcher.close()
        self.outbox.close()


@contextmanager
def leader(state: StateStore, recorder: Recorder) -> Iterator[Leader]:
    """A new leader on (a new handle of) the shared state."""
    store = reopen(state)
    running = Leader(store, recorder)
    try:
        yield running
    finally:
        running.close()
        store.close()


def alert(kind: EventKind, at: float, severity: str = "high", *, fired_at: float = T0,
          database: str = "a", name: str = "PostgresConnectionsHigh") -> AlertEvent:
    """An alert event; alerts differing only in ``database`` share a group (and incident)."""
    labels = tuple(sorted({"alertname": name, "severity": severity, "target": "main",
                           "database": database}.items()))
    firing = kind is EventKind.FIRING
    state = AlertState.FIRING if firing else AlertState.INACTIVE
    return AlertEvent(kind, "postgres", name,
                      Alert(labels, {"summary": name}, state, fired_at - 60, 0.9,
                            fired_at=fired_at, resolved_at=None if firing else at), at)


def trigger(receiver: str, level: int = 1) -> tuple[str, str, int]:
    return (receiver, "trigger", level)


def resolve(receiver: str, level: int = 1) -> tuple[str, str, int]:
    return (receiver, "resolve", level)


DEGRADATION = ("oncall-pagerduty", "oncall-slack")
OUTAGE = ("oncall-pagerduty", "oncall-slack", "leads-email")


# --- (a) the leader dies between the outbox commit and the escalation save ------------------

Step = Callable[[Leader], None]


def _nothing(first: Leader) -> None:
    pass


def _fire(first: Leader) -> None:
    first.dispatcher.handle(alert(EventKind.FIRING, T0))
    first.dispatcher.run_pass(T0)


def _fire_redo(second: Leader) -> None:
    # The rules hand the new leader what fires; unknown to the groups, it is taken as new.
    second.dispatcher.reconcile([alert(EventKind.FIRING, T0)], T0 + 5)
    second.run(T0 + 5)


def _fired(first: Leader) -> None:
    first.run(T0, alert(EventKind.FIRING, T0))


def _climb(first: Leader) -> None:
    first.dispatcher.run_pass(T0 + HOUR)


def _climb_redo(second: Leader) -> None:
    second.dispatcher.reconcile([alert(EventKind.FIRING, T0)], T0 + HOUR + 10)
    second.run(T0 + HOUR + 10)


def _repeating(first: Leader) -> None:
    first.run(T0, alert(EventKind.FIRING, T0, "critical"))
    first.run(T0 + 900)  # the first repeat of the last step


def _repeat(first: Leader) -> None:
    first.dispatcher.run_pass(T0 + 1800)  # the second


def _repeat_redo(second: Leader) -> None:
    second.dispatcher.reconcile([alert(EventKind.FIRING, T0, "critical")], T0 + 1810)
    second.run(T0 + 1810)


def _joined(first: Leader) -> None:
    first.run(T0, alert(EventKind.FIRING, T0))
    first.run(T0 + 30, alert(EventKind.FIRING, T0 + 30, fired_at=T0 + 30, database="b"))


def _update(first: Leader) -> None:
    first.dispatcher.run_pass(T0 + 60)  # the group's next flush announces b


def _update_redo(second: Leader) -> None:
    second.dispatcher.reconcile([alert(EventKind.FIRING, T0),
                                 alert(EventKind.FIRING, T0 + 30, fired_at=T0 + 30,
                                       database="b")], T0 + 70)
    second.run(T0 + 70)


def _resolve(first: Leader) -> None:
    first.dispatcher.handle(alert(EventKind.RESOLVED, T0 + 600))
    first.dispatcher.run_pass(T0 + 600)


def _resolve_redo(second: Leader) -> None:
    second.dispatcher.reconcile([], T0 + 610)  # the rules no longer know it
    second.run(T0 + 610)


# step → (what went before, the step whose save fails, its successor's redo, when that is,
#         what the receivers get in all)
CRASHES: dict[str, tuple[Step, Step, Step, float, Counter[tuple[str, str, int]]]] = {
    "fire": (_nothing, _fire, _fire_redo, T0 + 5,
             Counter(trigger(r) for r in DEGRADATION)),
    "climb": (_fired, _climb, _climb_redo, T0 + HOUR + 10,
              Counter([*(trigger(r) for r in DEGRADATION), trigger("leads-email", 2)])),
    "repeat": (_repeating, _repeat, _repeat_redo, T0 + 1810,
               Counter({trigger(r): 3 for r in OUTAGE})),
    "update": (_joined, _update, _update_redo, T0 + 70,
               Counter({trigger(r): 2 for r in DEGRADATION})),
    "resolve": (_fired, _resolve, _resolve_redo, T0 + 610,
                Counter([*(trigger(r) for r in DEGRADATION),
                         *(resolve(r) for r in DEGRADATION)])),
}


@pytest.mark.parametrize("step", sorted(CRASHES))
@pytest.mark.parametrize("table", ["escalation_incidents", "escalation_dispatch"])
def test_a_step_redone_by_the_next_leader_is_received_once(
        state: StateStore, step: str, table: str) -> None:
    before, crash, redo, at, expected = CRASHES[step]
    recorder = Recorder()
    with leader(state, recorder) as first:
        before(first)
        with away(state, table):
            # The notifications reach the outbox (and go out), the escalation and groups
            # are not saved ...
            assert failing(lambda: crash(first))
        first.settle()
        # ... and the leader dies before it tries again.
    assert recorder.got() == expected, "the dead leader delivered the step"
    with leader(state, recorder) as second:
        redo(second)
        assert recorder.got() == expected, "the outbox refused the redone step's ids"
        # Nothing else is owed: the successor saved the step and carries on from there.
        second.tick(at, at + 600)
        assert recorder.got() == expected
    assert len(recorder.ids()) == len(set(recorder.ids()))


def test_a_start_redone_while_its_pages_are_still_pending_is_committed_once(
        state: StateStore) -> None:
    with pipeline(state) as first:
        first.dispatcher.handle(alert(EventKind.FIRING, T0))
        with away(state, "escalation_incidents"):
            assert failing(lambda: first.dispatcher.run_pass(T0))
        assert first.new() == [trigger(r) for r in DEGRADATION]
    store = reopen(state)
    try:
        with pipeline(store) as second:
            second.seen = len(second.notifications())
            second.dispatcher.reconcile([alert(EventKind.FIRING, T0)], T0 + 5)
            second.tick(T0 + 5, T0 + HOUR + 60, step=60)
            assert second.new() == [trigger("leads-email", 2)], "no second Level 1 page"
    finally:
        store.close()


def test_the_climb_continues_after_a_redone_start(state: StateStore) -> None:
    recorder = Recorder()
    with leader(state, recorder) as first:
        first.dispatcher.handle(alert(EventKind.FIRING, T0, "critical"))
        with away(state, "escalation_incidents"):
            assert failing(lambda: first.dispatcher.run_pass(T0))
        first.settle()
    with leader(state, recorder) as second:
        second.dispatcher.reconcile([alert(EventKind.FIRING, T0, "critical")], T0 + 5)
        second.tick(T0 + 5, T0 + HOUR)
    # Started once, and both repeats of the last step arrive.
    assert recorder.got() == Counter({trigger(r): 3 for r in OUTAGE})


# --- (b) what is legitimately new still goes out -------------------------------------------


def test_every_legitimate_notification_is_delivered(state: StateStore) -> None:
    recorder = Recorder()
    expected: Counter[tuple[str, str, int]] = Counter()

    def check(*new: tuple[str, str, int]) -> None:
        expected.update(new)
        assert recorder.got() == expected
        assert len(recorder.ids()) == len(set(recorder.ids())), "one id each"

    with leader(state, recorder) as p:
        # Escalation levels: Level 1, then Level 2 after the wait.
        p.run(T0, alert(EventKind.FIRING, T0))
        check(*(trigger(r) for r in DEGRADATION))
        p.tick(T0 + 60, T0 + HOUR + 60)
        check(trigger("leads-email", 2))
        # A group update: another alert joins the incident; all three hear of it.
        p.run(T0 + HOUR + 100, alert(EventKind.FIRING, T0 + HOUR + 100,
                                     fired_at=T0 + HOUR + 100, database="b"))
        p.tick(T0 + HOUR + 120, T0 + HOUR + 240)
        check(*(trigger(r, 2) for r in (*DEGRADATION, "leads-email")))
        # A repeat after repeat_interval (4h), nothing having changed; then another.
        p.tick(T0 + HOUR + 300, T0 + 9 * HOUR + 300, step=300)
        check(*[trigger(r, 2) for r in (*DEGRADATION, "leads-email")] * 2)
        # Resolve.
        p.run(T0 + 10 * HOUR, alert(EventKind.RESOLVED, T0 + 10 * HOUR),
              alert(EventKind.RESOLVED, T0 + 10 * HOUR, fired_at=T0 + HOUR + 100,
                    database="b"))
        p.tick(T0 + 10 * HOUR + 60, T0 + 10 * HOUR + 120)
        check(*(resolve(r, 2) for r in (*DEGRADATION, "leads-email")))
        # The same incident key fires again: a new incident, paged from Level 1 again,
        # even though every id of the first one was finished minutes ago.
        again = T0 + 10 * HOUR + 600
        p.run(again, alert(EventKind.FIRING, again, fired_at=again))
        p.tick(again + 60, again + HOUR + 60)
        check(*(trigger(r) for r in DEGRADATION), trigger("leads-email", 2))
        p.run(again + 2 * HOUR, alert(EventKind.RESOLVED, again + 2 * HOUR, fired_at=again))
        check(*(resolve(r, 2) for r in (*DEGRADATION, "leads-email")))


def test_last_step_repeats_and_group_repeats_are_all_delivered(state: StateStore) -> None:
    recorder = Recorder()
    with leader(state, recorder) as p:
        p.run(T0, alert(EventKind.FIRING, T0, "critical"))
        p.tick(T0 + 60, T0 + 5 * HOUR, step=60)
        # The start, two repeats of the last step (15m apart), then the group's repeat
        # after repeat_interval (4h after the start): all at Level 1, all distinct.
        assert recorder.got() == Counter({trigger(r): 4 for r in OUTAGE})
        assert len(set(recorder.ids())) == 12


def test_the_same_alert_firing_again_with_the_same_start_is_a_new_incident(
        state: StateStore) -> None:
    """Nothing about the alerts tells the two incidents apart (a resolution the rules
    never sent, then the alert reported firing again as it was): the counter does."""
    recorder = Recorder()
    with leader(state, recorder) as p:
        p.run(T0, alert(EventKind.FIRING, T0))
        p.dispatcher.reconcile([], T0 + 600)  # say, a rule reload that dropped it
        p.tick(T0 + 600, T0 + 660)
        p.run(T0 + 700, alert(EventKind.FIRING, T0 + 700))  # fired_at T0 still
        assert recorder.got() == Counter({**{trigger(r): 2 for r in DEGRADATION},
                                          **{resolve(r): 1 for r in DEGRADATION}})
    # Also across a restart: the counters are durable.
    with leader(state, recorder) as p:
        p.dispatcher.reconcile([], T0 + 800)
        p.tick(T0 + 800, T0 + 860)
        p.run(T0 + 900, alert(EventKind.FIRING, T0 + 900))
        assert recorder.got() == Counter({**{trigger(r): 3 for r in DEGRADATION},
                                          **{resolve(r): 2 for r in DEGRADATION}})
        assert len(recorder.ids()) == len(set(recorder.ids()))


def test_the_same_history_gives_the_same_ids_anywhere(tmp_path: Path) -> None:
    """Ids depend on what is announced, not on chance or on which process made them."""
    def history(path: Path) -> list[str]:
        store = SQLiteState(path)
        try:
            with pipeline(store) as p:
                p.fire(T0, "PostgresTargetDown", "critical")
                p.tick(T0, T0 + 5 * HOUR, step=60)
                p.resolve(T0 + 5 * HOUR, "PostgresTargetDown", "critical")
                p.tick(T0 + 5 * HOUR, T0 + 5 * HOUR + 120)
                p.fire(T0 + 6 * HOUR, "PostgresTargetDown", "critical")
                return [n.id for n in p.notifications()]
        finally:
            store.close()

    one, two = history(tmp_path / "one.db"), history(tmp_path / "two.db")
    assert one == two and len(set(one)) == len(one) == 3 * 4 + 3 + 3
