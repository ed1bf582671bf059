"""AdvisoryLockLeadership, the real object, on a throwaway state database: two replicas,
one deposed by a terminated lock session or by a hung one, and a failed takeover."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from piggywatch.leadership import AdvisoryLockLeadership
from piggywatch.state import NotLeader, PostgresState
from tests.support import waiting as support
from tests.support.tcp_proxy import FreezableProxy

# The shortest takeover the configuration allows: a lease of 1 s, a check every 0.4 s.
TAKEOVER = 2.0


class Replica:
    """One replica's leadership and what its callbacks saw."""

    def __init__(self, name: str, state: PostgresState, *, fail_election: bool = False) -> None:
        self.name = name
        self.state = state
        self.events: list[str] = []
        self.fail_election = fail_election
        self.leadership = AdvisoryLockLeadership(state, instance=name,
                                                 advertise_url=f"http://{name}.test:9790")

    def start(self) -> Replica:
        self.leadership.start(self._elected, self._deposed)
        return self

    def _elected(self) -> None:
        self.events.append("elected")
        if self.fail_election:
            raise RuntimeError("the alert state could not be opened")

    def _deposed(self) -> None:
        self.events.append("deposed")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``condition``; the seconds it took."""
    began = time.monotonic()
    support.wait_for(condition, timeout, what, interval=0.01)
    return time.monotonic() - began


def lock_holders(admin: psycopg.Connection[tuple[object, ...]],
                 leadership: AdvisoryLockLeadership) -> list[int]:
    classid, objid = leadership._key
    rows = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND "
                         "classid = %s AND objid = %s AND objsubid = 2 AND granted",
                         (classid, objid)).fetchall()
    return [int(pid) for (pid,) in rows]


def fenced_write(state: PostgresState, leadership: AdvisoryLockLeadership) -> None:
    """One write of the leader's state, fenced by ``leadership``'s lock session."""
    with state.fenced(leadership.fence).connect().transaction() as tx:
        tx.execute("UPDATE ha_leader SET since = since WHERE id = 1")


@pytest.fixture
def schema() -> str:
    return f"lead_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def states(state_cluster: ThrowawayCluster, schema: str) -> Iterator[
        Callable[[str], PostgresState]]:
    opened: list[PostgresState] = []

    def open_state(url: str = "") -> PostgresState:
        opened.append(PostgresState(url or state_cluster.dsn(), schema=schema,
                                    takeover_after=TAKEOVER))
        return opened[-1]

    yield open_state
    for state in opened:
        state.close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.leadership.stop()


@pytest.fixture
def admin(state_cluster: ThrowawayCluster) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(state_cluster.dsn(), autocommit=True) as conn:
        yield conn


def test_a_terminated_lock_session_deposes_within_half_the_takeover_and_the_other_leads(
        states: Callable[[str], PostgresState], replicas: list[Replica],
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    a = Replica("a", states("")).start()
    replicas.append(a)
    wait_for(a.leadership.is_leader, 10, "a elected")
    b = Replica("b", states("")).start()
    replicas.append(b)
    wait_for(lambda: b.leadership.leader_url() == "http://a.test:9790", 10,
             "b sees a's address")
    fenced_write(a.state, a.leadership)  # the fence lets the leader write
    with pytest.raises(NotLeader):
        fenced_write(b.state, b.leadership)
    assert lock_holders(admin, a.leadership) == [a.leadership._pid]

    admin.execute("SELECT pg_terminate_backend(%s)", (a.leadership._pid,))
    took = wait_for(lambda: not a.leadership.is_leader(), TAKEOVER / 2, "a steps down")
    assert not a.leadership.confirm()
    with pytest.raises(NotLeader):
        fenced_write(a.state, a.leadership)
    wait_for(lambda: a.events == ["elected", "deposed"], 5, "a's delivery stopped")
    wait_for(b.leadership.is_leader, TAKEOVER + 5, "b takes over")
    assert b.events == ["elected"]
    fenced_write(b.state, b.leadership)
    with pytest.raises(NotLeader):
        fenced_write(a.state, a.leadership)
    assert lock_holders(admin, b.leadership) == [b.leadership._pid]
    assert took <= TAKEOVER / 2
    # a lets the new leader be: it is a standby pointing at b.
    wait_for(lambda: a.leadership.leader_url() == "http://b.test:9790", TAKEOVER + 5,
             "a sees b's address")
    assert not a.leadership.is_leader()


def test_a_hung_lock_session_loses_the_lease_within_half_the_takeover(
        state_cluster: ThrowawayCluster, states: Callable[[str], PostgresState],
        replicas: list[Replica], admin: psycopg.Connection[tuple[object, ...]]) -> None:
    direct = states("")
    url = urlsplit(state_cluster.dsn())
    with FreezableProxy((state_cluster.host, state_cluster.port)) as proxy:
        through_proxy = urlunsplit(url._replace(
            netloc=url.netloc.rsplit(":", 1)[0] + f":{proxy.port}"))
        a = Replica("a", states(through_proxy)).start()
        replicas.append(a)
        wait_for(a.leadership.is_leader, 10, "a elected")
        b = Replica("b", states("")).start()
        replicas.append(b)
        wait_for(lambda: b.leadership.leader_url() is not None, 10, "b is a standby")

        proxy.freeze()  # a's next round trip hangs; the server still holds a's lock
        took = wait_for(lambda: not a.leadership.is_leader(), TAKEOVER / 2 + 0.5,
                        "a's lease runs out")
        assert took <= TAKEOVER / 2 + 0.5
        assert not a.leadership.confirm()
        # Still held by a's session on the server: nobody else leads, so a's in-flight
        # writes may still commit, and b must not take over.
        assert lock_holders(admin, a.leadership) == [a.leadership._pid]
        fenced_write(direct, a.leadership)
        assert not b.leadership.is_leader()

        # The server drops the hung session (as its keepalives would): b takes over, and
        # what a still tries to write is refused though its thread still hangs.
        admin.execute("SELECT pg_terminate_backend(%s)", (a.leadership._pid,))
        wait_for(b.leadership.is_leader, TAKEOVER + 5, "b takes over")
        with pytest.raises(NotLeader):
            fenced_write(direct, a.leadership)
        assert not a.leadership.is_leader()

        proxy.thaw()
        proxy.cut()  # a's query fails at last: it deposes and stays a standby
        wait_for(lambda: a.events == ["elected", "deposed"], 10, "a deposed")
        assert not a.leadership.is_leader()
        assert b.leadership.is_leader()


def test_a_failed_takeover_leaves_no_half_leader(
        states: Callable[[str], PostgresState], replicas: list[Replica],
        admin: psycopg.Connection[tuple[object, ...]]) -> None:
    a = Replica("a", states(""), fail_election=True).start()
    replicas.append(a)
    wait_for(lambda: a.events[:2] == ["elected", "deposed"], 10, "a's takeover fails")
    assert not a.leadership.is_leader()
    assert not a.leadership.confirm()
    with pytest.raises(NotLeader):
        fenced_write(a.state, a.leadership)
    samples = {s.name: s.value for s in a.leadership.samples(time.time())
               if s.name == "piggywatch_leader"}
    assert samples == {"piggywatch_leader": 0.0}

    b = Replica("b", states("")).start()
    replicas.append(b)
    wait_for(b.leadership.is_leader, TAKEOVER + 5, "b takes the lock a let go")
    assert lock_holders(admin, b.leadership) == [b.leadership._pid]
    # The failed takeover counts as no change: a was never a leader to announce.
    changes = {dict(s.labels)["to"]: s.value for s in a.leadership.samples(time.time())
               if s.name == "piggywatch_leadership_changes_total"}
    assert changes == {"leader": 0.0, "standby": 0.0}


def test_a_graceful_stop_hands_over_at_once(
        states: Callable[[str], PostgresState], replicas: list[Replica]) -> None:
    a = Replica("a", states("")).start()
    wait_for(a.leadership.is_leader, 10, "a elected")
    b = Replica("b", states("")).start()
    replicas.append(b)
    wait_for(lambda: b.leadership.leader_url() is not None, 10, "b is a standby")
    began = time.monotonic()
    a.leadership.stop()
    assert a.events == ["elected", "deposed"]
    wait_for(b.leadership.is_leader, TAKEOVER, "b takes over without waiting out a lease")
    assert time.monotonic() - began < TAKEOVER
