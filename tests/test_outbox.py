"""The durable outbox: written before any attempt, removed only once accepted, retried with
backoff, in order per incident, throttled, and resumed after a crash."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piggywatch.alerting.channels import channel_throttles
from piggywatch.alerting.inbox import Inbox
from piggywatch.alerting.model import (
    Action,
    AlertInfo,
    AlertStatus,
    Delivery,
    Notification,
    Outcome,
)
from piggywatch.alerting.outbox import SPECS, STORE_KEY, Outbox
from piggywatch.alerting.outbox_store import decode_notification, encode_notification
from piggywatch.alerting.settings import Receiver
from piggywatch.state import NotLeader, PostgresState, SQLiteState, StateStore, Tx
from piggywatch.store import MemoryStore
from tests.support.state import on_postgresql
from tests.support.waiting import wait_for

T0 = float(int(time.time()))  # real-clock tests must not see their notifications expire
REPO = Path(__file__).resolve().parent.parent


def note(nid: str, *, receiver: str = "oncall", incident: str = "inc-1",
         action: Action = Action.TRIGGER, created_at: float = T0) -> Notification:
    alert = AlertInfo("fp1", AlertStatus.FIRING,
                      {"alertname": "PostgresDown", "severity": "critical", "target": "main"},
                      {"summary": "main is down"}, starts_at=created_at - 60, value="0")
    return Notification(nid, receiver, action, incident, {"alertname": "PostgresDown"},
                        (alert,), created_at)


class FakeClock:
    """Wall time that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedNotifier:
    """A channel answering from a script (then ACCEPTED), recording every attempt."""

    def __init__(self, *answers: Delivery | Exception,
                 receipt: Callable[[Notification], Mapping[str, str]] | None = None) -> None:
        self.answers = list(answers)
        self.receipt = receipt
        self.calls: list[tuple[Notification, dict[str, str], float]] = []
        self.lock = threading.Lock()

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        with self.lock:
            self.calls.append((notification, dict(receipt), time.monotonic()))
            answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        given_back = self.receipt(notification) if self.receipt else {}
        return Delivery(Outcome.ACCEPTED, receipt=given_back)

    @property
    def ids(self) -> list[str]:
        with self.lock:
            return [n.id for n, _, _ in self.calls]


class BlockingNotifier:
    """A channel that holds each request until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        self.entered.set()
        assert self.release.wait(10)
        return Delivery(Outcome.ACCEPTED)


class LongestBackoff(random.Random):
    """Jitter that always picks the longest delay, for tests that count retries."""

    def uniform(self, a: float, b: float) -> float:
        return b


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    wait_for(predicate, timeout, "the outbox's condition", interval=0.005)


def rows(state: Path | StateStore, sql: str) -> list[tuple[object, ...]]:
    """Read the state through a connection of its own, as another process would."""
    if isinstance(state, StateStore) and not isinstance(state, SQLiteState):
        shared = state.connect()
        try:
            return list(shared.query(sql))
        finally:
            shared.close()
    path = state.path if isinstance(state, SQLiteState) else state
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql).fetchall())


def write(state: StateStore, sql: str, params: tuple[object, ...] = ()) -> None:
    """Change the state behind the outbox's back."""
    conn = state.connect()
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def state_source(state: StateStore) -> str:
    """Python source that opens ``state`` in another process."""
    if isinstance(state, PostgresState):
        return (f"__import__('piggywatch.state').state.PostgresState("
                f"{state.url!r}, schema={state.schema!r})")
    assert isinstance(state, SQLiteState)
    return f"__import__('piggywatch.state').state.SQLiteState({str(state.path)!r})"


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def running() -> Iterator[Callable[[Outbox], Outbox]]:
    opened: list[Outbox] = []

    def start(outbox: Outbox) -> Outbox:
        opened.append(outbox)
        outbox.start()
        return outbox

    yield start
    for outbox in opened:
        outbox.close()


def given_up(inbox: Inbox, seen: list[tuple[Notification, Delivery]]
             ) -> list[tuple[Notification, Delivery]]:
    """``seen`` plus the failures the outbox recorded in ``inbox`` since the last call."""
    seen += [(f.notification, f.delivery) for f in inbox.drain().failures]
    return seen


def counts(outbox: Outbox, receiver: str = "oncall") -> dict[str, float]:
    return {dict(s.labels)["result"]: s.value for s in outbox.samples(T0)
            if s.name == "piggywatch_notifications_total"
            and dict(s.labels)["receiver"] == receiver}


# -- the stored form

texts = st.text(max_size=8)
mappings = st.dictionaries(texts, texts, max_size=3)
times = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(st.builds(
    Notification, id=texts, receiver=texts, action=st.sampled_from(Action), incident=texts,
    group_labels=mappings,
    alerts=st.lists(st.builds(AlertInfo, fingerprint=texts,
                              status=st.sampled_from(AlertStatus), labels=mappings,
                              annotations=mappings, starts_at=times,
                              ends_at=st.none() | times, value=texts, generator_url=texts),
                    max_size=3).map(tuple),
    created_at=times, level=st.integers(1, 9), acked_by=st.none() | texts,
    acked_at=st.none() | times, external_url=texts))
@settings(max_examples=200)
def test_notification_round_trips_exactly(n: Notification) -> None:
    back = decode_notification(encode_notification(n))
    assert back == n
    assert type(back.alerts) is tuple and type(back.action) is Action


def test_a_row_written_by_a_newer_version_is_kept_and_the_rest_delivered(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    with Outbox(state, {}) as outbox:
        outbox.enqueue(note("future"))
        outbox.enqueue(note("today", incident="inc-2"))
    body = encode_notification(note("future")).replace('"level":1', '"level":1,"colour":"red"')
    write(state, "UPDATE outbox_items SET body = ? WHERE id = 'future'", (body,))
    channel = ScriptedNotifier()
    running(Outbox(restart(), {"oncall": channel}))
    wait_until(lambda: rows(state, "SELECT id FROM outbox_items") == [("future",)])
    assert channel.ids == ["today"]
    assert "cannot be read" in caplog.text and "colour" in caplog.text


# -- durability

def test_notification_is_committed_before_the_attempt_and_removed_only_once_accepted(
        state: StateStore, running: Callable[[Outbox], Outbox]) -> None:
    channel = BlockingNotifier()
    outbox = running(Outbox(state, {"oncall": channel}))
    assert outbox.enqueue(note("n1"))
    assert channel.entered.wait(5)
    # The channel has the request in hand: the row is already visible to other connections.
    assert rows(state, "SELECT id, receiver, attempts FROM outbox_items") == [("n1", "oncall", 0)]
    decoded = decode_notification(str(rows(state, "SELECT body FROM outbox_items")[0][0]))
    assert decoded == note("n1")
    channel.release.set()
    wait_until(lambda: not rows(state, "SELECT id FROM outbox_items"))
    assert rows(state, "SELECT id FROM outbox_done") == [("n1",)]
    assert outbox.pending() == []


def test_enqueue_is_idempotent_on_the_notification_id(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    channel = ScriptedNotifier()
    outbox = Outbox(state_file, {"oncall": channel})
    assert outbox.enqueue(note("n1"))
    assert not outbox.enqueue(note("n1"))
    assert len(outbox.pending()) == 1
    running(outbox)
    wait_until(lambda: counts(outbox)["accepted"] == 1)
    assert not outbox.enqueue(note("n1")), "a delivered id must not go out twice"
    time.sleep(0.1)
    assert channel.ids == ["n1"]


def test_enqueue_many_commits_one_escalation_step_together(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    pd, slack = ScriptedNotifier(), ScriptedNotifier()
    outbox = Outbox(state_file, {"pd": pd, "slack": slack})
    step = [note("p1", receiver="pd"), note("s1", receiver="slack"), note("p1", receiver="pd")]
    assert outbox.enqueue_many(step) == [True, True, False]
    assert rows(state_file, "SELECT id FROM outbox_items ORDER BY seq") == [("p1",), ("s1",)]
    running(outbox)
    wait_until(lambda: pd.ids == ["p1"] and slack.ids == ["s1"])


def test_resumes_after_kill_9_and_delivers_each_pending_notification_once(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox]) -> None:
    script = textwrap.dedent(f"""
        import sys, threading
        from piggywatch.alerting.model import Delivery, Outcome
        from piggywatch.alerting.outbox import Outbox
        from tests.test_outbox import note

        tried = threading.Event()

        class Down:
            def send(self, notification, receipt):
                tried.set()
                return Delivery(Outcome.RETRY, "503 from the channel")

        outbox = Outbox({state_source(state)}, {{"oncall": Down()}}, backoff_base=0.01)
        outbox.start()
        for i in range(20):
            outbox.enqueue(note(f"n{{i}}", incident=f"inc-{{i % 3}}"))
        tried.wait(5)
        print("enqueued", flush=True)
        threading.Event().wait()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "enqueued"
        time.sleep(0.1)  # let it fail a few more attempts
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert len(rows(state, "SELECT id FROM outbox_items WHERE attempts > 0")) >= 1

    channel = ScriptedNotifier()
    outbox = running(Outbox(restart(), {"oncall": channel}))
    wait_until(lambda: len(channel.ids) == 20)
    wait_until(lambda: not rows(state, "SELECT id FROM outbox_items"))
    assert sorted(channel.ids) == sorted(f"n{i}" for i in range(20))
    for incident in ("inc-0", "inc-1", "inc-2"):  # enqueue order kept within each incident
        sent = [int(n.id[1:]) for n, _, _ in channel.calls if n.incident == incident]
        assert sent == sorted(sent)
    outbox.close()
    again = ScriptedNotifier()
    running(Outbox(restart(), {"oncall": again}))
    time.sleep(0.2)
    assert again.ids == []


# -- retries

def test_retry_with_backoff_then_success_is_accepted_exactly_once(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    clock = FakeClock()
    channel = ScriptedNotifier(Delivery(Outcome.RETRY, "503"), Delivery(Outcome.RETRY, "503"))
    outbox = running(Outbox(state_file, {"oncall": channel}, clock=clock, rng=LongestBackoff()))
    outbox.enqueue(note("n1"))
    for attempt, delay in ((1, 1.0), (2, 2.0)):  # base 1 s, doubling
        wait_until(lambda a=attempt: len(channel.ids) == a
                   and rows(state_file, "SELECT attempts FROM outbox_items") == [(a,)])
        assert rows(state_file, "SELECT next_attempt_at, last_error FROM outbox_items") == [
            (clock.now + delay, "503")]
        clock.advance(delay - 0.01)
        outbox.wake()
        time.sleep(0.05)
        assert len(channel.ids) == attempt
        clock.advance(0.01)
        outbox.wake()
    wait_until(lambda: counts(outbox)["accepted"] == 1)
    assert channel.ids == ["n1", "n1", "n1"]
    assert counts(outbox) == {"accepted": 1, "retried": 2, "failed": 0}
    assert rows(state_file, "SELECT id FROM outbox_items") == []


def test_backoff_is_full_jitter_doubling_up_to_five_minutes(state_file: Path) -> None:
    with Outbox(state_file, {}) as outbox:
        for attempts, ceiling in ((1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0),
                                  (500, 300.0)):
            delays = [outbox._backoff(attempts) for _ in range(300)]
            assert 0 <= min(delays) < ceiling / 4 and ceiling * 3 / 4 < max(delays) <= ceiling


def test_retry_after_is_honoured_for_the_whole_channel(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    clock = FakeClock()
    channel = ScriptedNotifier(Delivery(Outcome.RETRY, "429", retry_after=30.0))
    outbox = running(Outbox(state_file, {"oncall": channel}, clock=clock))
    outbox.enqueue(note("n1"))
    wait_until(lambda: len(channel.ids) == 1)
    outbox.enqueue(note("n2", incident="other"))  # another incident waits for the channel too
    clock.advance(29.0)
    outbox.wake()
    time.sleep(0.2)
    assert channel.ids == ["n1"]
    clock.advance(1.0)
    outbox.wake()
    wait_until(lambda: channel.ids == ["n1", "n1", "n2"])


def test_a_notifier_that_raises_is_retried_and_logs_its_traceback_once(
        state_file: Path, running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    channel = ScriptedNotifier(*[RuntimeError("bug in the notifier")] * 3)
    outbox = running(Outbox(state_file, {"oncall": channel}, backoff_base=0.01))
    outbox.enqueue(note("n1"))
    wait_until(lambda: counts(outbox)["accepted"] == 1)
    assert channel.ids == ["n1"] * 4
    [record] = [r for r in caplog.records if "raised on notification n1" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    retries = [r for r in caplog.records if "did not take notification n1" in r.getMessage()]
    assert len(retries) == 3 and all("notifier raised RuntimeError" in r.getMessage()
                                     for r in retries)


def test_permanent_refusal_is_not_retried_and_reported_once(
        state_file: Path, running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = Inbox()
    failures: list[tuple[Notification, Delivery]] = []
    channel = ScriptedNotifier(Delivery(Outcome.PERMANENT, "400 invalid routing key"))
    outbox = running(Outbox(state_file, {"oncall": channel}, failures=inbox))
    outbox.enqueue(note("n1"))
    wait_until(lambda: given_up(inbox, failures))
    time.sleep(0.1)
    given_up(inbox, failures)
    assert channel.ids == ["n1"]
    assert [(n.id, d.detail) for n, d in failures] == [("n1", "400 invalid routing key")]
    assert counts(outbox) == {"accepted": 0, "retried": 0, "failed": 1}
    assert rows(state_file, "SELECT id FROM outbox_items") == []
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "oncall" in record.getMessage() and "400 invalid routing key" in record.getMessage()
    assert "main is down" not in record.getMessage()  # the content is not logged


def test_a_notification_undelivered_for_a_day_is_given_up(
        state_file: Path, running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    inbox = Inbox()
    failures: list[tuple[Notification, Delivery]] = []
    channel = ScriptedNotifier(*[Delivery(Outcome.RETRY, "503")] * 1000)
    outbox = running(Outbox(state_file, {"oncall": channel}, clock=clock, failures=inbox))
    outbox.enqueue(note("n1"))
    wait_until(lambda: len(channel.ids) == 1)
    clock.advance(24 * 3600 + 1)
    outbox.wake()
    wait_until(lambda: given_up(inbox, failures))
    assert len(channel.ids) == 1
    assert "undelivered 24.0 h" in failures[0][1].detail and "503" in failures[0][1].detail
    assert "failed permanently" in caplog.text


# -- order and pace

def test_acknowledge_and_resolve_never_overtake_their_trigger(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    class TriggerFailsTwice(ScriptedNotifier):
        def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
            if notification.id == "trigger" and self.ids.count("trigger") < 2:
                self.calls.append((notification, dict(receipt), time.monotonic()))
                return Delivery(Outcome.RETRY, "503")
            return super().send(notification, receipt)

    channel = TriggerFailsTwice(receipt=lambda n: {"ts": n.id} if n.action is Action.TRIGGER
                                else {"updated": n.id})
    clock = FakeClock()
    outbox = Outbox(state_file, {"oncall": channel}, clock=clock, rng=LongestBackoff())
    outbox.enqueue(note("trigger"))
    outbox.enqueue(note("other", incident="inc-2"))
    outbox.enqueue(note("ack", action=Action.ACKNOWLEDGE))
    outbox.enqueue(note("resolve", action=Action.RESOLVE))
    running(outbox)
    for sent_before_retry in (2, 3):
        wait_until(lambda n=sent_before_retry: len(channel.calls) == n)
        time.sleep(0.05)  # nothing more goes out while the trigger waits for its retry
        assert len(channel.calls) == sent_before_retry
        clock.advance(2.0)
        outbox.wake()
    wait_until(lambda: not outbox.pending())
    sent = [(n.id, receipt) for n, receipt, _ in channel.calls]
    # The retried trigger holds up its own incident, not the other one.
    assert sent[:3] == [("trigger", {}), ("other", {}), ("trigger", {})]
    assert sent[3:] == [("trigger", {}), ("ack", {"ts": "trigger"}),
                        ("resolve", {"ts": "trigger", "updated": "ack"})]


def test_throttle_spaces_sends_to_one_receiver(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    slack, email = ScriptedNotifier(), ScriptedNotifier()
    outbox = Outbox(state_file, {"slack": slack, "email": email}, throttles={"slack": 0.1})
    for i in range(5):
        outbox.enqueue(note(f"s{i}", receiver="slack", incident=f"inc-{i}"))
        outbox.enqueue(note(f"e{i}", receiver="email", incident=f"inc-{i}"))
    running(outbox)
    wait_until(lambda: not outbox.pending())
    slack_at = [at for _, _, at in slack.calls]
    assert min(b - a for a, b in itertools.pairwise(slack_at)) >= 0.1
    # Slack's throttle alone spreads its five sends over at least 0.4 s; email, unthrottled,
    # is not held up by it (each send still commits a claim and its outcome).
    assert email.calls[-1][2] < slack.calls[-1][2], "other receivers are not held up"
    assert slack.ids == [f"s{i}" for i in range(5)]


def test_default_throttles_follow_the_channel_limits() -> None:
    receivers = [
        Receiver.model_validate({"name": "pd", "pagerduty": {"routing_key": "k"}}),
        Receiver.model_validate({"name": "sl", "slack": {"token": "t", "channel": "#c"}}),
        Receiver.model_validate({"name": "mail", "email": {
            "to": ["a@example.com"], "from": "p@example.com", "smarthost": "mx:25"}}),
    ]
    assert channel_throttles(receivers) == {"pd": 0.5, "sl": 1.0}


def test_enqueue_to_send_is_well_under_a_second(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    channel = ScriptedNotifier()
    outbox = running(Outbox(state_file, {"oncall": channel}))
    latencies = []
    for i in range(20):
        began = time.monotonic()
        outbox.enqueue(note(f"n{i}", incident=f"inc-{i}"))
        wait_until(lambda i=i: len(channel.ids) == i + 1)
        latencies.append(channel.calls[-1][2] - began)
        time.sleep(0.01)
    # The budget (1 s) is bench/outbox_bench.py's; here, on a machine that may be loaded,
    # the typical send is a few ms.
    assert statistics.median(latencies) < 0.5


# -- leadership, receivers, shutdown

def test_may_send_false_stops_delivery_at_once(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    leader = threading.Event()
    leader.set()

    class LosesLeadership(ScriptedNotifier):
        def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
            leader.clear()  # another replica took over while this request was out
            return super().send(notification, receipt)

    channel = LosesLeadership()
    outbox = Outbox(state_file, {"oncall": channel}, may_send=leader.is_set)
    for i in range(5):
        outbox.enqueue(note(f"n{i}", incident=f"inc-{i}"))
    running(outbox)
    wait_until(lambda: channel.ids)
    time.sleep(0.3)
    assert channel.ids == ["n0"]
    assert len(outbox.pending()) == 4
    leader.set()
    outbox.wake()
    wait_until(lambda: len(channel.ids) == 2)


def test_items_of_an_unconfigured_receiver_wait_until_it_is_configured_again(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    with Outbox(state, {"oncall": ScriptedNotifier()}) as before:
        before.enqueue(note("n1", receiver="old-slack"))
    outbox = running(Outbox(restart(), {"oncall": ScriptedNotifier()}))
    assert "receiver 'old-slack', which is not configured" in caplog.text
    outbox.housekeep()
    assert [n.id for n in outbox.pending("old-slack")] == ["n1"]
    depth = {dict(s.labels)["receiver"]: s.value for s in outbox.samples(T0)
             if s.name == "piggywatch_outbox_depth"}
    assert depth == {"oncall": 0, "old-slack": 1}
    channel = ScriptedNotifier()
    outbox.reconfigure({"oncall": ScriptedNotifier(), "old-slack": channel})
    wait_until(lambda: channel.ids == ["n1"])


def test_items_of_an_unconfigured_receiver_expire_after_a_day(state_file: Path) -> None:
    clock = FakeClock()
    inbox = Inbox()
    with Outbox(state_file, {}, clock=clock, failures=inbox) as outbox:
        outbox.enqueue(note("n1", receiver="gone"))
        outbox.enqueue(note("n2", receiver="gone", created_at=T0 + 3600))
        clock.advance(24 * 3600 + 1)
        outbox.housekeep()
        assert [f.notification.id for f in inbox.drain().failures] == ["n1"]
        assert [n.id for n in outbox.pending()] == ["n2"]


def test_stop_drains_within_the_grace_period_and_keeps_the_rest(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox]) -> None:
    class Slow(ScriptedNotifier):
        def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
            time.sleep(0.02)
            return super().send(notification, receipt)

    channel = Slow()
    outbox = Outbox(state, {"oncall": channel})
    for i in range(100):
        outbox.enqueue(note(f"n{i}", incident=f"inc-{i}"))
    running(outbox)
    began = time.monotonic()
    outbox.stop(0.3)
    assert time.monotonic() - began < 0.9
    time.sleep(0.1)  # an attempt in flight at the deadline may still finish, nothing more
    done = len(channel.ids)
    assert 5 <= done < 100
    assert len(rows(state, "SELECT id FROM outbox_items")) == 100 - done
    outbox.close()
    rest = ScriptedNotifier()
    running(Outbox(restart(), {"oncall": rest}))
    wait_until(lambda: len(rest.ids) == 100 - done)
    assert sorted(channel.ids + rest.ids) == sorted(f"n{i}" for i in range(100))


def test_a_send_still_hanging_at_the_deadline_stays_pending_until_its_answer_is_recorded(
        state_file: Path, running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture,
) -> None:
    channel = BlockingNotifier()
    outbox = running(Outbox(state_file, {"oncall": channel}))
    outbox.enqueue(note("n1"))
    assert channel.entered.wait(5)
    began = time.monotonic()
    outbox.stop(0.2)
    assert time.monotonic() - began < 1.0
    assert "outbox-oncall still waited for their channel" in caplog.text
    outbox.close()
    assert rows(state_file, "SELECT id FROM outbox_items") == [("n1",)]
    # The request completes after the outbox was closed: the channel has it, so the outcome
    # is still recorded (a next start, or the next leader, must not send it again).
    channel.release.set()
    wait_until(lambda: not rows(state_file, "SELECT id FROM outbox_items"))
    assert rows(state_file, "SELECT id FROM outbox_done") == [("n1",)]


def test_stop_returns_at_once_when_nothing_can_be_sent(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    clock = FakeClock()
    outbox = running(Outbox(state_file, {"oncall": ScriptedNotifier(Delivery(Outcome.RETRY, "429",
                                                                        retry_after=600))},
                            clock=clock))
    outbox.enqueue(note("n1"))
    wait_until(lambda: counts(outbox)["retried"] == 1)
    began = time.monotonic()
    outbox.stop(10.0)
    assert time.monotonic() - began < 1.5
    assert len(outbox.pending()) == 1


# -- concurrency and metrics

def test_many_threads_enqueue_while_delivering(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    class Flaky(ScriptedNotifier):
        def __init__(self) -> None:
            super().__init__()
            self.accepted: list[str] = []

        def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
            with self.lock:
                self.calls.append((notification, dict(receipt), time.monotonic()))
                if len(self.calls) % 7 == 0:
                    return Delivery(Outcome.RETRY, "503")
                self.accepted.append(notification.id)
            return Delivery(Outcome.ACCEPTED)

    channels = {"a": Flaky(), "b": Flaky()}
    outbox = running(Outbox(state_file, channels, backoff_base=0.002))

    def producer(t: int) -> None:
        for i in range(100):
            receiver = "ab"[i % 2]
            outbox.enqueue(note(f"t{t}-{i}", receiver=receiver, incident=f"t{t}-{i % 6}"))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: not outbox.pending(), timeout=20)
    for receiver, channel in channels.items():
        assert len(channel.accepted) == len(set(channel.accepted)) == 400
        assert counts(outbox, receiver)["accepted"] == 400
        by_incident: dict[tuple[str, int], list[int]] = {}
        for nid in channel.accepted:  # each producer enqueued its incidents' items in order
            producer, i = nid.split("-")
            by_incident.setdefault((producer, int(i) % 6), []).append(int(i))
        assert all(seqs == sorted(seqs) for seqs in by_incident.values())
    assert rows(state_file, "SELECT count(*) FROM outbox_items") == [(0,)]


def test_metrics_describe_depth_age_results_and_latency(
        state_file: Path, running: Callable[[Outbox], Outbox]) -> None:
    clock = FakeClock()
    channel = ScriptedNotifier(Delivery(Outcome.RETRY, "503", retry_after=60))
    outbox = running(Outbox(state_file, {"oncall": channel}, clock=clock))
    outbox.enqueue(note("n1", created_at=T0 - 5))
    outbox.enqueue(note("n2", created_at=T0 - 2, incident="inc-2"))
    wait_until(lambda: counts(outbox)["retried"] == 1)
    values = {(s.name, dict(s.labels).get("result", "")): s.value
              for s in outbox.samples(T0 + 10)}
    assert values[("piggywatch_outbox_depth", "")] == 2
    assert values[("piggywatch_outbox_oldest_age_seconds", "")] == 15
    clock.advance(60)
    outbox.wake()
    wait_until(lambda: not outbox.pending())
    values = {(s.name, dict(s.labels).get("result", "")): s.value
              for s in outbox.samples(clock.now)}
    assert values[("piggywatch_outbox_depth", "")] == 0
    assert values[("piggywatch_outbox_oldest_age_seconds", "")] == 0
    assert values[("piggywatch_notifications_total", "accepted")] == 2
    assert values[("piggywatch_notifications_total", "retried")] == 1
    assert values[("piggywatch_notification_latency_seconds_count", "")] == 2
    assert values[("piggywatch_notification_latency_seconds_sum", "")] == 65 + 62
    store = MemoryStore()
    store.register(SPECS)
    store.publish(STORE_KEY, outbox.samples(clock.now), clock.now)  # every sample is declared
    assert {s.name for s in outbox.samples(clock.now)} == {spec.name for spec in SPECS}


def test_a_resolved_notification_keeps_every_field(
        state: StateStore, restart: Callable[[], StateStore]) -> None:
    n = replace(note("n1", action=Action.RESOLVE), acked_by="ana", acked_at=T0 + 1.25,
                level=3, external_url="https://pw.example.com")
    with Outbox(state, {}) as outbox:
        outbox.enqueue(n)
    with Outbox(restart(), {}) as outbox:
        assert outbox.pending() == [n]


# -- several replicas: one attempt at a time, handed over without a second send

GRACE = 30.0


def handle(state: StateStore, sql: str, params: tuple[object, ...] = ()) -> object:
    conn = state.connect()
    try:
        row = conn.one(sql, params)
        return None if row is None else row[0]
    finally:
        conn.close()


def test_a_new_leader_waits_for_the_old_leaders_attempt_and_drops_what_it_finished(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    channel_a = BlockingNotifier()
    a = running(Outbox(state, {"oncall": channel_a}, clock=clock, in_flight_grace=GRACE))
    a.enqueue(note("x"))
    assert channel_a.entered.wait(5)  # A's request is out
    assert handle(state, "SELECT sending_since FROM outbox_items WHERE id = 'x'") == T0

    caplog.set_level(logging.INFO, logger="piggywatch.alerting.outbox")
    channel_b = ScriptedNotifier()
    b = running(Outbox(restart(), {"oncall": channel_b}, clock=clock, in_flight_grace=GRACE))
    b.enqueue(note("y", incident="inc-2"))  # another incident is not held up
    wait_until(lambda: channel_b.ids == ["y"])
    clock.advance(GRACE - 1)
    b.wake()
    time.sleep(0.1)
    assert channel_b.ids == ["y"], "x is in flight at A: B waits"
    assert "is being sent by another replica" in caplog.text

    channel_a.release.set()  # A's send succeeds and A records it
    wait_until(lambda: a.pending() == [])
    clock.advance(1)
    b.wake()
    wait_until(lambda: b.pending() == [])
    time.sleep(0.05)
    assert channel_b.ids == ["y"], "B must not send x again"
    assert "x (trigger, incident inc-1) to receiver oncall was finished by another replica" \
        in caplog.text
    assert counts(b) == {"accepted": 1, "retried": 0, "failed": 0}


def test_an_item_finished_by_another_handle_is_dropped_without_sending(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox]) -> None:
    channel = ScriptedNotifier()
    outbox = Outbox(state, {"oncall": channel}, in_flight_grace=GRACE)
    outbox.enqueue(note("x"))
    outbox.enqueue(note("x-ack", action=Action.ACKNOWLEDGE))
    other = Outbox(restart(), {"oncall": ScriptedNotifier()}, in_flight_grace=GRACE)
    running(other)
    wait_until(lambda: not rows(state, "SELECT id FROM outbox_items"))
    other.close()
    running(outbox)
    wait_until(lambda: outbox.pending() == [])
    time.sleep(0.05)
    assert channel.ids == []
    assert rows(state, "SELECT id FROM outbox_done ORDER BY id") == [("x",), ("x-ack",)]


def test_a_claim_older_than_the_grace_is_taken_over_and_a_fresh_one_blocks_its_incident(
        state: StateStore, running: Callable[[Outbox], Outbox]) -> None:
    clock = FakeClock()
    with Outbox(state, {}, clock=clock) as before:
        before.enqueue(note("stale", incident="inc-1"))
        before.enqueue(note("fresh", incident="inc-2"))
        before.enqueue(note("fresh-resolve", incident="inc-2", action=Action.RESOLVE))
        before.enqueue(note("free", incident="inc-3"))
    # Claims left by another replica: one long ago (it died), one just now (still sending).
    write(state, "UPDATE outbox_items SET sending_since = ? WHERE id = 'stale'", (T0 - GRACE,))
    write(state, "UPDATE outbox_items SET sending_since = ? WHERE id = 'fresh'", (T0 - 1,))
    channel = ScriptedNotifier()
    outbox = running(Outbox(state, {"oncall": channel}, clock=clock, in_flight_grace=GRACE))
    wait_until(lambda: sorted(channel.ids) == ["free", "stale"])
    clock.advance(GRACE - 1.5)
    outbox.wake()
    time.sleep(0.1)
    assert sorted(channel.ids) == ["free", "stale"], "the resolve waits behind its trigger"
    clock.advance(0.5)
    outbox.wake()
    wait_until(lambda: channel.ids[2:] == ["fresh", "fresh-resolve"])
    # The channel sees a send before the outbox deletes its row: wait for the deletion.
    wait_until(lambda: rows(state, "SELECT id FROM outbox_items") == [])
    assert sorted(channel.ids[:2]) == ["free", "stale"], "each sent once"
    assert len(channel.ids) == 4, "each sent once"


def test_with_no_grace_an_item_left_claimed_by_a_kill_9_is_retried_at_once(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox]) -> None:
    script = textwrap.dedent(f"""
        import threading
        from piggywatch.alerting.outbox import Outbox
        from tests.test_outbox import note

        class Hangs:
            def send(self, notification, receipt):
                print("sending", flush=True)
                threading.Event().wait()

        outbox = Outbox({state_source(state)}, {{"oncall": Hangs()}})
        outbox.start()
        outbox.enqueue(note("x"))
        threading.Event().wait()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "sending"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # The row stays claimed by an attempt that will never record anything.
    [(claimed_at,)] = rows(state, "SELECT sending_since FROM outbox_items")
    assert isinstance(claimed_at, float)
    channel = ScriptedNotifier()
    began = time.monotonic()
    running(Outbox(restart(), {"oncall": channel}))
    wait_until(lambda: channel.ids == ["x"])
    assert time.monotonic() - began < 3.0
    wait_until(lambda: not rows(state, "SELECT id FROM outbox_items"))


@on_postgresql
def test_an_item_left_claimed_by_a_kill_9_is_taken_over_within_the_grace_on_postgresql(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture) -> None:
    script = textwrap.dedent(f"""
        import threading
        from piggywatch.alerting.outbox import Outbox
        from tests.test_outbox import note

        class Hangs:
            def send(self, notification, receipt):
                print("sending", flush=True)
                threading.Event().wait()

        outbox = Outbox({state_source(state)}, {{"oncall": Hangs()}}, in_flight_grace={GRACE})
        outbox.start()
        outbox.enqueue(note("x"))
        threading.Event().wait()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "sending"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    [(token,)] = rows(state, "SELECT claimed_by FROM outbox_items")
    assert isinstance(token, str)
    # The server drops the dead process's sessions as it sees their sockets close.
    wait_until(lambda: rows(state, "SELECT count(*) FROM pg_stat_activity WHERE "
                                   f"application_name LIKE 'piggywatch-%/{token}'") == [(0,)])
    caplog.set_level(logging.INFO, logger="piggywatch.alerting.outbox_store")
    channel = ScriptedNotifier()
    began = time.monotonic()
    running(Outbox(restart(), {"oncall": channel}, in_flight_grace=GRACE))
    wait_until(lambda: channel.ids == ["x"])
    assert time.monotonic() - began < 3.0, "the dead claimant's grace is not waited out"
    wait_until(lambda: not rows(state, "SELECT id FROM outbox_items"))
    assert f"by process {token}, which has no state database session left" in caplog.text


@on_postgresql
def test_a_fenced_outbox_sends_nothing_once_deposed_but_records_what_it_sent(
        state: StateStore, restart: Callable[[], StateStore],
        running: Callable[[Outbox], Outbox], caplog: pytest.LogCaptureFixture) -> None:
    deposed = threading.Event()

    def fence(tx: Tx) -> None:
        tx.one("SELECT 1")  # runs in the transaction, as the leadership's fence does
        if deposed.is_set():
            raise NotLeader("this replica does not hold the leadership lock")

    caplog.set_level(logging.INFO, logger="piggywatch.alerting.outbox")
    channel = BlockingNotifier()
    leader = running(Outbox(state.fenced(fence), {"oncall": channel},
                            completion_state=state, in_flight_grace=GRACE))
    leader.enqueue(note("x"))
    assert channel.entered.wait(5)
    leader.enqueue(note("y", incident="inc-2"))
    deposed.set()  # the lock is lost while x's request is out
    with pytest.raises(NotLeader):
        leader.enqueue(note("z", incident="inc-3"))
    channel.release.set()
    # x went out, so its outcome is recorded through the unfenced store...
    wait_until(lambda: rows(state, "SELECT id FROM outbox_done") == [("x",)])
    assert rows(state, "SELECT id, sending_since FROM outbox_items") == [("y", None)]
    # ...and y, whose claim the fence refuses, is not sent.
    time.sleep(0.3)
    assert [n.id for n in leader.pending()] == ["y"]
    assert "not sending notification y to oncall" in caplog.text
    assert counts(leader) == {"accepted": 1, "retried": 0, "failed": 0}
    leader.housekeep()  # gives nothing up, forgets nothing
    leader.close()

    # The next leader sends y only.
    successor = ScriptedNotifier()
    running(Outbox(restart(), {"oncall": successor}, in_flight_grace=GRACE))
    wait_until(lambda: successor.ids == ["y"])
    wait_until(lambda: rows(state, "SELECT id FROM outbox_items") == [])
