"""Which replica evaluates rules and delivers notifications.

With SQLite state there is one replica and it always leads (``SoleLeader``). With
PostgreSQL state, replicas compete for a session-level advisory lock on the state database
(``AdvisoryLockLeadership``): the session holding it leads; everybody else is a standby that
collects, serves /metrics, and tries the lock again every ``poll`` seconds.

Timing, with T = ``takeover_after`` (15 s by default):

- A standby tries the lock every ``poll`` = min(1 s, T/5) (one cheap query), so once the
  lock is free it leads within ``poll`` plus the time to open the state and start
  delivering (well under a second; see bench/failover_bench.py).
- The lock is free at once when the leader's process dies (its socket closes). When its
  host dies or the network goes, the server notices through TCP keepalives and
  ``tcp_user_timeout``, both set from T on every state connection (about 0.7 T for
  T ≥ 10 s; never under 4 s, so below ~6 s only process deaths are taken over within T).
- The leader runs a query on its lock session every ``poll``. If one fails (the backend was
  terminated, the server restarted) it stops leading at once; if none succeeded for T/2
  (the query hangs), ``is_leader`` is false from then on, so nothing more is evaluated or
  sent. A replica that lost the lock waits T before competing again, so a standby takes
  over rather than the replica whose session just failed.
- Fencing: every transaction that writes the leader's state (``fenced``) takes a shared
  transaction-level advisory lock and checks, inside the transaction, that this replica's
  lock session holds the leadership lock; a newly elected leader takes the same lock
  exclusively before it loads anything, so a deposed leader's transaction either committed
  before the new leader read the state or fails with ``NotLeader``. The outbox claims each
  notification with such a transaction right before sending it.
- ``on_elected`` / ``on_deposed`` run on the leadership thread only (or on the caller of
  ``start``/``stop``): a sender thread that notices the lost lock only revokes (every gate
  closes at once) and wakes that thread, which deposes.
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

from piggywatch.state import NotLeader, PostgresState, SchemaTooNew, StateStore, Tx
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

log = logging.getLogger(__name__)

STORE_KEY = "piggywatch/leadership"
SPECS = (
    MetricSpec("piggywatch_leader", MetricKind.GAUGE,
               "1 on the replica that evaluates rules and delivers notifications, 0 on "
               "standbys"),
    MetricSpec("piggywatch_leadership_changes_total", MetricKind.COUNTER,
               "Times this replica became the leader (to=leader) or stopped being it "
               "(to=standby)"),
    MetricSpec("piggywatch_state_database_up", MetricKind.GAUGE,
               "Whether the state is being kept (1) or not (0): the PostgreSQL state database "
               "answered the last leadership check; the SQLite state file is still there "
               "and writable"),
)

Callback = Callable[[], None]


class Leadership:
    """Whether this replica leads; calls ``on_elected`` / ``on_deposed`` as that changes."""

    def __init__(self) -> None:
        self._on_elected: Callback = _nothing
        self._on_deposed: Callback = _nothing
        self._leading = False  # the gate: evaluation, delivery and the fence check it
        self._serving = False  # on_elected ran and on_deposed has not yet
        self._changes = {"leader": 0, "standby": 0}
        # Called after every change (the daemon republishes piggywatch_leader at once).
        self.on_change: Callback = _nothing

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        """Begin; the callbacks run on the leadership's own thread (or this one)."""
        self._on_elected, self._on_deposed = on_elected, on_deposed

    def stop(self) -> None:
        """Give up leadership (deposing first, while still holding it) and stop competing."""

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

    def _elect(self) -> bool:
        """Run the election callback; False (and a standby again) if it failed."""
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
        self._serving = True
        self._changes["leader"] += 1
        self.on_change()
        return True

    def _depose(self, why: str, *, graceful: bool = False) -> None:
        """Stop leading. ``graceful`` (stopping while the lock is still held): the callback
        runs as leader, so it may deliver what is due and record the history first."""
        if not self._serving:
            self._leading = False
            return
        if graceful and self._leading:
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
            self._serving = False
            self._changes["standby"] += 1
            self.on_change()


class SoleLeader(Leadership):
    """One replica on a SQLite state file: it leads from start to stop."""

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        super().start(on_elected, on_deposed)
        self._leading = True
        self._on_elected()
        self._serving = True
        self._changes["leader"] += 1
        self.on_change()

    def stop(self) -> None:
        self._depose("stopping", graceful=True)


class AdvisoryLockLeadership(Leadership):
    """Leadership held as a PostgreSQL session-level advisory lock on the state database."""

    def __init__(self, state: PostgresState, *, advertise_url: str = "",
                 instance: str | None = None) -> None:
        super().__init__()
        self._state = state
        self.takeover_after = state.takeover_after
        self.poll = max(0.1, min(1.0, self.takeover_after / 5))
        self.lease = self.takeover_after / 2
        self.advertise_url = advertise_url
        self.instance = instance or socket.gethostname()
        self._key = state.lock_key("leader")
        self._fence_key = state.lock_key("fence")
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_lock = threading.Lock()
        self._last_ok = 0.0  # monotonic time of the last successful round trip as leader
        self._pid = 0  # the lock session's backend
        self._rejoin_at = 0.0  # after losing the lock, give a standby the first chance
        self._revoked = ""  # why another thread revoked leadership, for the log
        self._reachable: bool | None = None  # the state database, as last seen
        self._leader_url: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        super().start(on_elected, on_deposed)
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.takeover_after + 5)
        self._depose("stopping", graceful=True)
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
            self._revoke(f"the lock session failed: {_reason(exc)}")
            return False
        return True

    def leader_url(self) -> str | None:
        return None if self._leading else self._leader_url

    def fence(self, tx: Tx) -> None:
        """Raise ``NotLeader`` unless this replica's lock session holds the lock now; runs
        first in every transaction that writes the leader's state (see ``fenced``)."""
        if not self._leading:
            raise NotLeader("this replica is not the leader")
        # Shared: a new leader takes it exclusively before loading the state, so this
        # transaction is either over by then or checks after the lock moved.
        tx.one("SELECT pg_advisory_xact_lock_shared(?, ?)", self._fence_key)
        classid, objid = self._key
        if tx.one("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = ? AND "
                  "objid = ? AND objsubid = 2 AND pid = ? AND granted",
                  (classid, objid, self._pid)) is None:
            raise NotLeader("this replica's session no longer holds the leadership lock")

    def fenced(self) -> StateStore:
        """The state store whose transactions only commit while this replica leads."""
        return self._state.fenced(self.fence)

    def samples(self, now: float) -> list[Sample]:
        out = super().samples(now)
        if self._reachable is not None:
            out.append(Sample("piggywatch_state_database_up", labels_of(),
                              1.0 if self._reachable else 0.0, now))
        return out

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("leadership check failed")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _step(self) -> None:
        if self._serving:
            if self._leading:
                try:
                    self._round_trip()
                    return
                except psycopg.Error as exc:
                    self._revoke(f"the lock session failed: {_reason(exc)}")
            self._depose(self._revoked or "leadership revoked")
            self._revoked = ""
            self._rejoin_at = time.monotonic() + self.takeover_after
            return
        if self._stop.is_set() or time.monotonic() < self._rejoin_at:
            return
        try:
            conn = self._session()
            with self._conn_lock:
                got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                   self._key).fetchone()
            self._seen(True)
            if not (got and got[0]):
                self._leader_url = self._read_leader_url(conn)
                return
            with self._conn_lock, conn.transaction():
                # Wait for the last leader's fenced transactions still in flight; later
                # ones fail their check (the lock is ours now).
                conn.execute(f"SET LOCAL lock_timeout = {round(self.takeover_after * 1000)}")
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", self._fence_key)
                conn.execute(
                    "INSERT INTO ha_leader (id, instance, url, since) VALUES (1, %s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, "
                    "url = excluded.url, since = excluded.since",
                    (self.instance, self.advertise_url, time.time()))
        except (psycopg.Error, SchemaTooNew) as exc:
            if self._reachable is not False:
                log.warning("cannot use the state database for leadership (retrying every "
                            "%g s): %s", self.poll, _reason(exc))
            self._seen(False)
            self._close()
            return
        if self._stop.is_set():
            self._close()
            return
        self._last_ok = time.monotonic()
        log.info("elected leader (instance %s): evaluating rules and delivering", self.instance)
        if not self._elect():
            self._close()  # releases the lock for another replica

    def _seen(self, reachable: bool) -> None:
        if reachable != self._reachable:
            self._reachable = reachable
            self.on_change()

    def _revoke(self, why: str) -> None:
        """Close every gate now (any thread); the leadership thread deposes."""
        if self._leading:
            self._revoked = self._revoked or why
        self._leading = False
        self._close()
        self._wake.set()

    def _round_trip(self) -> None:
        with self._conn_lock:
            conn = self._conn
            if conn is None or conn.closed:
                raise psycopg.OperationalError("the lock session is closed")
            conn.execute("SELECT 1")
        self._last_ok = time.monotonic()

    def _session(self) -> psycopg.Connection[Any]:
        with self._conn_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
        conn = psycopg.connect(self._state.url, autocommit=True,
                               **self._state.connection_kwargs("piggywatch-leader"))
        try:
            # The schema exists before the session looks for ha_leader.
            self._state.migrate_on(conn)
        except BaseException:
            conn.close()
            raise
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
