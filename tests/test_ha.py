"""High availability end to end: two real daemons share one PostgreSQL state database, page
real local PagerDuty / Slack / SMTP servers, and are killed and cut off from the database."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.metrics import Values, total, value
from tests.support.servers.pagerduty import PagerDutyServer
from tests.support.waiting import wait_for
from tests.test_delivery_e2e import Channels, actions, load, setup

TAKEOVER = 3.0


@pytest.fixture
def channels() -> Iterator[Channels]:
    with ExitStack() as stack:
        yield Channels(stack)


def ha_config(tmp_path: Path, channels: Channels, target: ThrowawayCluster,
              state: ThrowawayCluster, *, wait: str = "4s") -> Path:
    """The e2e delivery config with its state in a fresh schema of the state cluster."""
    return shared_state(setup(tmp_path, channels, target, wait=wait), state)


def shared_state(config: Path, state: ThrowawayCluster) -> Path:
    """``config`` with its state in a fresh schema of the state cluster, for replicas."""
    schema = f"ha_{uuid.uuid4().hex[:10]}"
    text = config.read_text().replace(
        "state: sqlite:///./state.db\n",
        f"state: {state.dsn()}\nstate_schema: {schema}\nha: {{takeover_after: {TAKEOVER}s}}\n")
    assert schema in text
    config.write_text(text)
    return config


@contextmanager
def two_replicas(tmp_path: Path, channels: Channels, target: ThrowawayCluster,
                 state: ThrowawayCluster, *, wait: str
                 ) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """Two daemons on one configuration (and one state schema), each in its own dir."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = ha_config(tmp_path / "a", channels, target, state, wait=wait)
    with DaemonProcess(config, tmp_path / "a") as a, DaemonProcess(config, tmp_path / "b") as b:
        yield a, b


@pytest.fixture
def busy() -> Iterator[list[psycopg.Connection]]:
    """Connections a test opens to push utilisation up; closed at the end."""
    held: list[psycopg.Connection] = []
    yield held
    release(held)


def release(held: list[psycopg.Connection]) -> None:
    for conn in held:
        conn.close()
    held.clear()


def posts(channels: Channels) -> list[object]:
    """Slack messages posted (thread replies and updates aside)."""
    return [m for m in channels.slack.messages if m.thread_ts is None]


def stop_cleanly(*daemons: DaemonProcess) -> None:
    """SIGTERM each: exit 0, and no traceback in its log."""
    for daemon in daemons:
        code, _ = daemon.terminate()
        assert code == 0
        assert "Traceback" not in daemon.stderr()


def is_leader(values: Values) -> bool:
    return value(values, "piggywatch_leader") == 1.0


def leader_of(*daemons: DaemonProcess) -> tuple[DaemonProcess, DaemonProcess]:
    """(leader, standby), once exactly one of them leads."""
    found: list[tuple[DaemonProcess, DaemonProcess]] = []

    def one_leads() -> bool:
        leading = [d for d in daemons if is_leader(d.metrics())]
        if len(leading) != 1:
            return False
        found.append((leading[0], next(d for d in daemons if d is not leading[0])))
        return True

    wait_for(one_leads, 3 * TAKEOVER + 10, "exactly one leader")
    return found[-1]


def triggers(pd: PagerDutyServer) -> list[str]:
    return [key for action, key in actions(pd) if action == "trigger"]


def test_two_replicas_page_once_and_a_standby_answers_the_api(
        pg_cluster: ThrowawayCluster, state_cluster: ThrowawayCluster, channels: Channels,
        busy: list[psycopg.Connection], tmp_path: Path) -> None:
    pd, slack = channels.pagerduty, channels.slack
    with two_replicas(tmp_path, channels, pg_cluster, state_cluster, wait="1h") as (a, b):
        leader, standby = leader_of(a, b)
        # Both collect and serve /metrics, both are ready; only one leads.
        assert standby.get("/readyz").status_code == 200
        assert value(standby.metrics(), "pg_up", target="main") == 1.0
        busy += load(pg_cluster)
        wait_for(lambda: len(pd.events) >= 1 and len(slack.messages) >= 1, 20,
                 "PagerDuty trigger and Slack post")
        # Three leases long, a standby that wrongly took over would have paged again; the
        # leader has evaluated past that with nothing left to send.
        leader.wait_until_settled(after=time.time() + 3 * TAKEOVER)
        assert not is_leader(standby.metrics())
        assert len(triggers(pd)) == 1
        assert len(posts(channels)) == 1
        # The standby forwards API calls to the leader, which holds the alerts.
        answer = standby.api("GET", "/api/v1/alerts")
        assert answer.status_code == 200, answer.text
        [alert] = answer.json()["data"]["alerts"]
        assert alert["state"] == "firing" and alert["level"] == 1
        ack = standby.api("POST", f"/api/v1/alerts/{alert['fingerprint']}/ack",
                          {"by": "alice", "comment": "via the standby"})
        assert ack.status_code == 200, ack.text
        [dedup_key] = triggers(pd)
        wait_for(lambda: pd.alert_status(dedup_key) == "acknowledged", 10, "PD ack")
        [alert] = leader.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
        assert alert["ack"]["by"] == "alice"
        firing = {"alertname": "PostgresConnectionsHigh", "alertstate": "firing",
                  "severity": "high", "target": "main"}
        assert value(standby.metrics(), "piggywatch_leader") == 0.0
        assert value(standby.metrics(), "ALERTS", **firing) is None
        assert value(leader.metrics(), "ALERTS", **firing) == 1.0
        exposed = leader.get("/metrics").text + standby.get("/metrics").text
        stop_cleanly(a, b)
        # The state database's password is in the configuration, and nowhere else.
        secret = state_cluster.superuser_password
        assert secret not in exposed + a.stderr() + b.stderr()


def test_sigkill_of_the_leader_with_an_escalation_due_fires_the_step_once(
        pg_cluster: ThrowawayCluster, state_cluster: ThrowawayCluster, channels: Channels,
        busy: list[psycopg.Connection], tmp_path: Path) -> None:
    pd, smtp = channels.pagerduty, channels.smtp
    with two_replicas(tmp_path, channels, pg_cluster, state_cluster, wait="4s") as (a, b):
        leader, standby = leader_of(a, b)
        busy += load(pg_cluster)
        wait_for(lambda: len(pd.events) >= 1, 20, "PagerDuty trigger")
        # The Level 2 step falls due 4 s after the page; the leader dies before that, once it
        # has recorded Level 1 as delivered (killed between a send and its record, the next
        # leader sends again: at least once, by design).
        leader.wait_for_metric(
            lambda v: total(v, "piggywatch_outbox_depth") == 0
            and value(v, "piggywatch_notifications_total", receiver="oncall-pagerduty",
                      result="accepted") == 1.0, 10, "Level 1 recorded as delivered")
        assert smtp.mails == []
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.proc.wait()
        standby.wait_for_metric(is_leader, TAKEOVER + 5, "the standby takes over")
        took_over = time.monotonic() - killed
        # One lease, with room for a loaded machine (the bench measures it: failover_bench).
        assert took_over <= TAKEOVER + 3.0, f"takeover took {took_over:.1f} s"
        wait_for(lambda: len(smtp.mails) >= 1, 15, "the Level 2 mail from the new leader")
        standby.wait_until_settled(after=time.time())
        assert len(smtp.mails) == 1, "the escalation step fired once"
        assert len(triggers(pd)) == 1, "no second trigger after the takeover"
        assert len({key for _, key in actions(pd)}) == 1
        assert len(posts(channels)) == 1
        assert value(standby.metrics(), "piggywatch_leadership_changes_total",
                     to="leader") == 1.0
        stop_cleanly(standby)


def test_a_leader_cut_from_the_state_database_steps_down_and_rejoins_as_standby(
        pg_cluster: ThrowawayCluster, state_cluster: ThrowawayCluster, channels: Channels,
        busy: list[psycopg.Connection], tmp_path: Path) -> None:
    pd, slack = channels.pagerduty, channels.slack
    with two_replicas(tmp_path, channels, pg_cluster, state_cluster, wait="1h") as (a, b):
        first, second = leader_of(a, b)
        busy += load(pg_cluster)
        wait_for(lambda: len(pd.events) >= 1 and len(slack.messages) >= 1, 20,
                 "PagerDuty trigger and Slack post")
        [dedup_key] = triggers(pd)
        # Terminate the backend of the session that holds the leadership lock.
        with psycopg.connect(state_cluster.dsn(), autocommit=True) as admin:
            [(pid,)] = admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 2 AND pid IN (SELECT pid FROM pg_stat_activity WHERE "
                "application_name LIKE 'piggywatch-leader/%')").fetchall()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        cut = time.monotonic()
        second.wait_for_metric(is_leader, TAKEOVER + 5, "the other replica takes over")
        assert time.monotonic() - cut <= TAKEOVER + 3.0
        first.wait_for_metric(lambda v: not is_leader(v), 5, "the cut leader steps down")
        # The incident resolves now: the new leader sends it, once.
        release(busy)
        wait_for(lambda: pd.alert_status(dedup_key) == "resolved", 20, "PD resolve")
        # The first replica reconnects and waits as a standby.
        with psycopg.connect(state_cluster.dsn(), autocommit=True) as admin:
            wait_for(lambda: admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                "'piggywatch-leader/%'").fetchone() == (2,), 3 * TAKEOVER + 5,
                "the first replica's new lock session")
        # A lease later the first replica still waits as a standby.
        second.wait_until_settled(after=time.time() + TAKEOVER)
        assert not is_leader(first.metrics()) and is_leader(second.metrics())
        assert value(first.metrics(), "piggywatch_leadership_changes_total",
                     to="standby") == 1.0
        assert value(second.metrics(), "piggywatch_notifications_total",
                     receiver="oncall-pagerduty", result="accepted") == 1.0
        assert [action for action, _ in actions(pd)] == ["trigger", "resolve"]
        assert len(posts(channels)) == 1
        assert "no longer the leader" in first.stderr()
        stop_cleanly(first, second)


def test_a_state_database_that_is_down_leaves_a_ready_standby_until_it_returns(
        pg_cluster: ThrowawayCluster, tmp_path: Path) -> None:
    state = ThrowawayCluster(max_connections=30)
    state.start()
    try:
        dsn = state.dsn()
        state.stop()
        config = tmp_path / "piggywatch.yaml"
        (tmp_path / "rules.yaml").write_text(
            "groups: [{name: g, rules: [{alert: A, expr: vector(1)}]}]\n")
        config.write_text(
            fast_rules_config(pg_cluster.dsn(dbname="piggybong"))
            .replace("state: sqlite:///./state.db\n",
                     f"state: {dsn}\nha: {{takeover_after: {TAKEOVER}s}}\n"))
        with DaemonProcess(config, tmp_path) as daemon:
            values = daemon.wait_for_metric(
                lambda v: value(v, "piggywatch_state_database_up") == 0.0, 10,
                "piggywatch_state_database_up 0")
            assert value(values, "piggywatch_leader") == 0.0
            assert value(values, "pg_up", target="main") == 1.0
            assert daemon.get("/readyz").status_code == 200
            answer = daemon.api("GET", "/api/v1/alerts")
            assert answer.status_code == 503 and "no leader" in answer.text
            state.start()
            values = daemon.wait_for_metric(is_leader, 3 * TAKEOVER + 10, "leadership")
            assert value(values, "piggywatch_state_database_up") == 1.0
            daemon.wait_until(
                lambda: daemon.api("GET", "/api/v1/alerts").status_code == 200, 10,
                "the alerting API answering")
            code, _ = daemon.terminate()
            assert code == 0
        logs = daemon.stderr()
        assert "Traceback" not in logs
        assert logs.count("cannot use the state database") == 1
    finally:
        state.destroy()
