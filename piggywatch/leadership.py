"""Which replica evaluates rules and delivers notifications.

With SQLite state there is one replica and it always leads (``SoleLeader``). With
PostgreSQL state, replicas compete for a session-level advisory lock on the state database
(``AdvisoryLockLeadership``): the session holding it leads; everybody else is a standby that
collects, serves /metrics, and tries the lock again every ``poll`` seconds.

Timing, with T = ``takeover_after`` (15 s by default):

- A standby tries the lock every T/5, so once the lock is free it leads within T/5 plus
  the time to open the state and start delivering.
- The leader runs a query on its lock session every T/5. If one fails (the backend was
  terminated, the server restarted) it stops at once. If none has succeeded for T/2 (the
  network is gone and the query hangs), it stops delivering too: ``is_leader`` is false.
- The lock session tells the *server* to drop it when its peer is gone for about 0.6 T
  (TCP keepalives after 0.3 T idle, three probes 0.1 T apart; unacknowledged data for
  0.6 T). So a leader whose node died loses the lock within ~0.6 T, and a leader cut off
  from the database has stopped delivering (at 0.5 T) before anyone else can start.
- Before each delivery batch the outbox calls ``confirm``, a round trip on the lock
  session: a leader whose session is gone learns it before it sends, not after.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from piggywatch.state import NotLeader, PostgresState, StateStore, Tx
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

log = logging.getLogger(__name__)

SOURCE = "piggywatch/leadership"
SPECS = (
    MetricSpec("piggywatch_leader", MetricKind.GAUGE,
               "1 on the replica that evaluates rules and delivers notifications, 0 on "
               "standbys"),
    MetricSpec("piggywatch_leadership_changes_total", MetricKind.COUNTER,
               "Times this replica became the leader (to=leader) or stopped being it "
               "(to=standby)"),
)

Callback = Callable[[], None]


class Leadership:
    """Whether this replica leads; calls ``on_elected`` / ``on_deposed`` as that changes."""

    def __init__(self) -> None:
        self._on_elected: Callback = _nothing
        self._on_deposed: Callback = _nothing
        self._leading = False
        self._changes = {"leader": 0, "standby": 0}
        # Called after every change (the daemon republishes piggywatch_leader at once).
        self.on_change: Callback = _nothing

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        """Begin; the callbacks run on the leadership's own thread (or this one)."""
        self._on_elected, self._on_deposed = on_elected, on_deposed

    def stop(self) -> None:
        """Give up leadership (deposing first) and stop competing."""

    def is_leader(self) -> bool:
        """Whether this replica leads now (no round trip)."""
        return self._leading

    def confirm(self) -> bool:
        """Whether this replica still leads, checked with the database where there is one;
        called before each delivery batch."""
        return self._leading

    def leader_url(self) -> str | None:
        """Where the leader's API is, when another replica leads."""
        return None

    def samples(self, now: float) -> list[Sample]:
        """``piggywatch_leader`` and the change counters."""
        out = [Sample("piggywatch_leader", labels_of(), 1.0 if self.is_leader() else 0.0, now)]
        out += [Sample("piggywatch_leadership_changes_total", labels_of(to=to), float(n), now)
                for to, n in self._changes.items()]
        return out

    def _become_leader(self) -> bool:
        """Run the election callback; False (and standby) if it failed."""
        self._leading = True  # before the callback: what it opens checks the fence
        try:
            self._on_elected()
        except Exception:
            self._leading = False
            log.exception("could not take over as leader; staying a standby")
            try:
                self._on_deposed()
            except Exception:
                log.exception("cleaning up after the failed takeover failed too")
            return False
        self._changes["leader"] += 1
        self.on_change()
        return True

    def _become_standby(self, why: str, *, graceful: bool = False) -> None:
        """Stop leading. ``graceful`` (stopping while the lock is still held): the callback
        runs as leader, so it may deliver what is due and record the history first."""
        if not self._leading:
            return
        if graceful:
            log.info("stepping down as leader (%s)", why)
        else:
            self._leading = False
            log.warning("no longer the leader (%s): rule evaluation and delivery stop here",
                        why)
        try:
            self._on_deposed()
        except Exception:
            log.exception("stopping rule evaluation and delivery failed")
        finally:
            self._leading = False
            self._changes["standby"] += 1
            self.on_change()


class SoleLeader(Leadership):
    """One replica on a SQLite state file: it leads from start to stop."""

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        super().start(on_elected, on_deposed)
        self._leading = True
        self._on_elected()
        self._changes["leader"] += 1
        self.on_change()

    def stop(self) -> None:
        self._become_standby("stopping", graceful=True)


class AdvisoryLockLeadership(Leadership):
    """Leadership held as a PostgreSQL session-level advisory lock on the state database."""

    def __init__(self, state: PostgresState, *, takeover_after: float = 15.0,
                 advertise_url: str = "", instance: str | None = None) -> None:
        super().__init__()
        self._state = state
        self.takeover_after = float(takeover_after)
        self.poll = max(0.1, self.takeover_after / 5)
        self.lease = self.takeover_after / 2
        self.advertise_url = advertise_url
        self.instance = instance or socket.gethostname()
        self._key = state.lock_key("leader")
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        self._last_ok = 0.0  # monotonic time of the last successful round trip as leader
        self._pid = 0  # the lock session's backend
        self._rejoin_at = 0.0  # after losing the lock, give a standby the first chance
        self._leader_url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        super().start(on_elected, on_deposed)
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll + 5)
        self._become_standby("stopping", graceful=True)
        # Closing the session releases the lock at once: a standby takes over at its next
        # try instead of waiting for the server to notice.
        self._close()

    def is_leader(self) -> bool:
        return self._leading and time.monotonic() - self._last_ok < self.lease

    def confirm(self) -> bool:
        if not self.is_leader():
            return False
        try:
            self._round_trip()
        except psycopg.Error as exc:
            self._lost(f"the lock session failed: {_reason(exc)}")
            return False
        return True

    def leader_url(self) -> str | None:
        return None if self._leading else self._leader_url

    def fence(self, tx: Tx) -> None:
        """Raise ``NotLeader`` unless this replica's lock session holds the lock now; run
        inside every transaction that writes the leader's state (see ``fenced``)."""
        classid, objid = self._key
        if not self._leading or tx.one(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = ? AND "
                "objid = ? AND objsubid = 2 AND pid = ? AND granted",
                (classid, objid, self._pid)) is None:
            raise NotLeader("this replica does not hold the leadership lock")

    def fenced(self) -> StateStore:
        """The state store whose transactions only commit while this replica leads."""
        return self._state.fenced(self.fence)

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("leadership check failed")
            self._stop.wait(self.poll)

    def _step(self) -> None:
        if self._leading:
            try:
                self._round_trip()
            except psycopg.Error as exc:
                self._lost(f"the lock session failed: {_reason(exc)}")
            else:
                return
            if not self._leading:
                return
        if self._leading and not self.is_leader():
            self._lost(f"no answer from the state database for {self.lease:g} s")
            return
        if time.monotonic() < self._rejoin_at:
            return
        try:
            conn = self._session()
            with self._conn_lock:
                got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                   self._key).fetchone()
            if not (got and got[0]):
                self._leader_url = self._read_leader_url(conn)
                return
            with self._conn_lock:
                conn.execute(
                    "INSERT INTO ha_leader (id, instance, url, since) VALUES (1, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, "
                    "url = excluded.url, since = excluded.since",
                    (self.instance, self.advertise_url, time.time()))
        except psycopg.Error as exc:
            log.warning("cannot reach the state database for leadership: %s", _reason(exc))
            self._close()
            return
        self._last_ok = time.monotonic()
        log.info("elected leader (instance %s): evaluating rules and delivering", self.instance)
        if not self._become_leader():
            self._close()  # releases the lock for another replica

    def _round_trip(self) -> None:
        with self._conn_lock:
            conn = self._conn
            if conn is None or conn.closed:
                raise psycopg.OperationalError("the lock session is closed")
            conn.execute("SELECT 1")
        self._last_ok = time.monotonic()

    def _lost(self, why: str) -> None:
        if self._leading:
            self._rejoin_at = time.monotonic() + self.takeover_after
        self._become_standby(why)
        self._close()

    def _session(self) -> psycopg.Connection[Any]:
        with self._conn_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
        self._state.pool()  # the schema exists before the session looks for ha_leader
        t = self.takeover_after
        conn = psycopg.connect(
            self._state.url, autocommit=True,
            **self._state.connection_kwargs("piggywatch-leader"),
            keepalives=1, keepalives_idle=max(1, round(0.3 * t)),
            keepalives_interval=max(1, round(0.1 * t)), keepalives_count=3,
            tcp_user_timeout=max(1000, round(600 * t)))
        # The server's side of the same: it drops the session (and the lock) when this
        # process's host is gone, within ~0.6 T.
        conn.execute(
            "SELECT set_config('tcp_keepalives_idle', %s, false), "
            "set_config('tcp_keepalives_interval', %s, false), "
            "set_config('tcp_keepalives_count', '3', false), "
            "set_config('tcp_user_timeout', %s, false)",
            (str(max(1, round(0.3 * t))), str(max(1, round(0.1 * t))),
             str(max(1000, round(600 * t)))))
        with self._conn_lock:
            self._conn = conn
            self._pid = conn.info.backend_pid
        return conn

    def _read_leader_url(self, conn: psycopg.Connection[Any]) -> str | None:
        with self._conn_lock:
            row = conn.execute("SELECT url FROM ha_leader WHERE id = 1").fetchone()
        return str(row[0]) if row and row[0] else None

    def _close(self) -> None:
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _nothing() -> None:
    pass
