"""The dispatcher when the state database fails under it, or its leader dies half-way.

Failures are real: a table renamed away for a moment from another connection (so a write
of the dispatcher or of its outbox fails, on either backend), or a fence on the PostgreSQL
store that raises NotLeader (how a deposed leader's writes fail). A leader that "dies"
half-way is a dispatcher closed without a retry; its successor is a new one on the same
state, as a new leader builds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from piggywatch.alerting.acks import Ack, Acks
from piggywatch.alerting.model import Action
from piggywatch.rules.alerts import EventKind
from piggywatch.state import NotLeader, SQLiteState, StateStore, Tx
from tests.support.state import away, failing, on_postgresql, reopen
from tests.test_dispatcher import T0, Pipeline, _event

HIGH = ("PostgresConnectionsHigh", "high")


@contextmanager
def restarted(state: StateStore) -> Iterator[Pipeline]:
    """The dispatcher (and outbox) a new leader builds on the shared state."""
    store = reopen(state)
    pipeline = Pipeline(store)
    try:
        pipeline.seen = len(pipeline.notifications())  # what the last leader left pending
        yield pipeline
    finally:
        pipeline.close()
        store.close()


@contextmanager
def pipeline_on(state: StateStore) -> Iterator[Pipeline]:
    pipeline = Pipeline(state)
    try:
        yield pipeline
    finally:
        pipeline.close()


# --- an acknowledgement across a handover -------------------------------------------------


def test_an_ack_the_dead_leader_recorded_is_carried_out_once_by_the_next(
        state: StateStore) -> None:
    with pipeline_on(state) as first:
        fp = first.fire(T0, *HIGH)
        incident = first.notifications()[0].incident
    # The leader recorded the ack, then died before the escalation was marked acknowledged.
    acks = Acks(state)
    acks.record(Ack(incident, "alice", T0 + 600, "looking", fp))
    acks.close()

    with restarted(state) as second:
        second.tick(T0 + 610, T0 + 2 * 3600, step=60)
        assert second.new() == [("oncall-pagerduty", "acknowledge", 1),
                                ("oncall-slack", "acknowledge", 1)], "acked, and no Level 2"
        assert {(n.acked_by, n.acked_at) for n in second.notifications()[-2:]} == {
            ("alice", T0 + 600)}
        # A retried acknowledge finds it done: the first ack keeps the credit, nobody is
        # told twice.
        again = second.dispatcher.incidents.acknowledge(fp, "alice", "looking", now=T0 + 7300)
        assert again is not None and [(a.by, new) for a, new in again.acks] == [
            ("alice", False)]
        second.tick(T0 + 7300, T0 + 7400)
        assert second.new() == []
        [status] = second.dispatcher.incidents.status([(fp, {})]).values()
        assert status["ack"]["by"] == "alice"

    with restarted(state) as third:
        third.tick(T0 + 7400, T0 + 4 * 3600, step=600)
        assert third.new() == [], "carried out once, not again by the next leader"


def test_a_retried_ack_carries_out_what_the_dead_leader_recorded(state: StateStore) -> None:
    with pipeline_on(state) as first:
        fp = first.fire(T0, *HIGH)
        incident = first.notifications()[0].incident
    acks = Acks(state)
    acks.record(Ack(incident, "alice", T0 + 600, "", fp))
    acks.close()

    with restarted(state) as second:
        # The retry arrives before the new leader's first pass.
        result = second.dispatcher.incidents.acknowledge(fp, "bob", now=T0 + 620)
        assert result is not None and [(a.by, new) for a, new in result.acks] == [
            ("alice", False)]
        assert second.new() == [("oncall-pagerduty", "acknowledge", 1),
                                ("oncall-slack", "acknowledge", 1)]
        second.tick(T0 + 620, T0 + 2 * 3600, step=60)
        assert second.new() == []
        assert second.dispatcher.incidents.acknowledge(fp, "bob", now=T0 + 7300) is not None
        assert second.new() == []


def test_ack_notifications_the_dead_leader_committed_are_not_sent_again(
        state: StateStore) -> None:
    with pipeline_on(state) as first:
        fp = first.fire(T0, *HIGH)
        first.new()
        with away(state, "escalation_incidents"):
            # Recorded, acknowledge notifications committed, the escalation not saved...
            assert failing(lambda: first.dispatcher.incidents.acknowledge(fp, "alice",
                                                                          now=T0 + 600))
        assert first.new() == [("oncall-pagerduty", "acknowledge", 1),
                               ("oncall-slack", "acknowledge", 1)]
        # ... and the leader dies before it tries again.

    with restarted(state) as second:
        second.tick(T0 + 610, T0 + 2 * 3600, step=60)
        assert second.new() == [], "the outbox had them already, and no Level 2"
        assert [n.action for n in second.notifications()].count(Action.ACKNOWLEDGE) == 2


def test_an_ack_that_failed_half_way_is_completed_by_the_next_pass(state: StateStore) -> None:
    with pipeline_on(state) as p:
        fp = p.fire(T0, *HIGH)
        p.new()
        with away(state, "outbox_items"):
            assert failing(lambda: p.dispatcher.incidents.acknowledge(fp, "alice", now=T0 + 600))
        assert p.new() == []
        p.tick(T0 + 610, T0 + 2 * 3600, step=60)
        assert p.new() == [("oncall-pagerduty", "acknowledge", 1),
                           ("oncall-slack", "acknowledge", 1)], "and no Level 2"
        result = p.dispatcher.incidents.acknowledge(fp, "alice", now=T0 + 7300)
        assert result is not None and not result.acks[0][1]
        assert p.new() == []


def test_an_ack_of_an_ended_incident_does_not_ack_its_successor(state: StateStore) -> None:
    with pipeline_on(state) as first:
        fp = first.fire(T0, *HIGH)
        first.dispatcher.incidents.acknowledge(fp, "alice", now=T0 + 60)
        with away(state, "escalation_acks"):
            # The incident ends; its ack is not forgotten (and the leader dies).
            assert failing(lambda: first.resolve(T0 + 120, *HIGH))
    with restarted(state) as second:
        second.tick(T0 + 130, T0 + 200)
        second.fire(T0 + 300, *HIGH)  # the same alert again: a new incident, same key
        second.tick(T0 + 300, T0 + 4000, step=60)
        assert second.new() == [("oncall-pagerduty", "trigger", 1),
                                ("oncall-slack", "trigger", 1),
                                ("leads-email", "trigger", 2)]


# --- a pass that fails ----------------------------------------------------------------------

Step = Callable[[Pipeline], None]


def _scenario() -> list[tuple[str, Step, Step]]:
    """(name, the step, its retry once the database works again) of an incident's life."""
    def fire(p: Pipeline) -> None:
        p.dispatcher.handle(_event(EventKind.FIRING, T0, *HIGH, "main"))
        p.dispatcher.run_pass(T0)

    def climb(p: Pipeline) -> None:
        p.dispatcher.run_pass(T0 + 3600)

    def ack(p: Pipeline) -> None:
        fp = _event(EventKind.FIRING, T0, *HIGH, "main").alert.fingerprint
        p.dispatcher.incidents.acknowledge(fp, "alice", now=T0 + 4000)

    def resolve(p: Pipeline) -> None:
        p.dispatcher.handle(_event(EventKind.RESOLVED, T0 + 5000, *HIGH, "main"))
        p.dispatcher.run_pass(T0 + 5000)

    def later(at: float) -> Step:
        def run(p: Pipeline) -> None:
            p.dispatcher.run_pass(at)
        return run

    return [("fire", fire, later(T0 + 10)),
            ("climb", climb, later(T0 + 3610)),
            ("ack", ack, ack),  # the API's caller tries again
            ("resolve", resolve, later(T0 + 5010))]


@pytest.mark.parametrize("table", ["escalation_incidents", "escalation_dispatch",
                                   "outbox_items", "escalation_acks"])
def test_a_pass_failing_on_the_state_database_loses_no_notification(
        state: StateStore, tmp_path: Path, table: str) -> None:
    expected = []
    with pipeline_on(SQLiteState(tmp_path / "reference.db")) as reference:
        for _, step, retry in _scenario():
            step(reference)
            retry(reference)
            expected.append(reference.new())
    assert [a for step in expected for _, a, _ in step] == [
        "trigger", "trigger", "trigger", "acknowledge", "acknowledge", "acknowledge",
        "resolve", "resolve", "resolve"]

    failed = []
    with pipeline_on(state) as p:
        for name, step, retry in _scenario():
            with away(state, table):
                if failing(lambda: step(p)):  # noqa: B023 - called at once
                    failed.append(name)
            retry(p)
            assert p.new() == expected.pop(0), name
        assert failed, f"no step writes {table}"
    # What the failures held up was saved too: the next leader has nothing left to say.
    with restarted(state) as after:
        after.tick(T0 + 5010, T0 + 9000, step=300)
        assert after.new() == []


def test_a_failing_pass_is_logged_once_and_retried_until_the_database_is_back(
        state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="piggywatch.alerting.dispatcher")
    with pipeline_on(state) as p:
        p.dispatcher.start()
        with away(state, "escalation_incidents"):
            p.dispatcher.handle(_event(EventKind.FIRING, T0, *HIGH, "main"))
            time.sleep(2.5)  # two retries, at least
        assert _wait_for(lambda: len(p.notifications()) == 2)
        assert _wait_for(lambda: "works again" in caplog.text)
        p.dispatcher.stop()
        assert p.new() == [("oncall-pagerduty", "trigger", 1), ("oncall-slack", "trigger", 1)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "escalation_incidents" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), "no traceback per pass"
    with restarted(state) as after:
        after.tick(T0, T0 + 600, step=60)
        assert after.new() == [], "the pass was saved once the table was back"


@on_postgresql
def test_a_deposed_leader_stops_dispatching_quietly(
        state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="piggywatch.alerting.dispatcher")
    deposed = threading.Event()

    def fence(tx: Tx) -> None:
        if deposed.is_set():
            raise NotLeader("this replica is not the leader")

    first_alert = _event(EventKind.FIRING, T0, *HIGH, "main")
    second_alert = _event(EventKind.FIRING, T0, *HIGH, "replica")
    with pipeline_on(state.fenced(fence)) as leader:
        leader.dispatcher.start()
        leader.dispatcher.handle(first_alert)
        assert _wait_for(lambda: len(leader.notifications()) == 2)
        deposed.set()
        leader.dispatcher.handle(second_alert)
        assert _wait_for(lambda: "no longer the leader" in caplog.text)
        time.sleep(1.5)
        assert len(leader.notifications()) == 2
    assert not any(r.levelno >= logging.WARNING or r.exc_info for r in caplog.records)
    # The next leader hears of both alerts from its rules; the first was announced already.
    with restarted(state) as successor:
        successor.dispatcher.reconcile([first_alert, second_alert], T0 + 5)
        successor.dispatcher.run_pass(T0 + 5)
        new = successor.notifications()[successor.seen:]
        assert {n.group_labels["target"] for n in new} == {"replica"}
        assert len(new) == 2


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
