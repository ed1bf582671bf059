"""One dedicated, protected connection per monitored database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Params, Query
from psycopg.pq import TransactionStatus

from piggywatch.collectors.base import CollectorError
from piggywatch.dsn import dsn_problem

log = logging.getLogger(__name__)

APPLICATION_NAME = "piggywatch"


class PostgresTarget:
    """The daemon's single connection to one database, shared by that target's collectors.

    Protects the monitored database: one connection only (``application_name=piggywatch``,
    every query in a transaction begun READ ONLY), a statement_timeout on every query, a
    deadline for each sampling cycle, and one cycle at a time. A broken connection is
    dropped and reopened by the next cycle, so a database that comes back is picked up
    without a restart.
    """

    def __init__(self, name: str, dsn: str, *, connect_timeout: float = 5.0) -> None:
        self.name = name
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._up: bool | None = None
        self.last_error: str | None = None
        self.server_version_num = 0
        # Added to every sample of this target (postgres_exporter's server, job, instance).
        self.labels: tuple[tuple[str, str], ...] = ()
        # Checked once here: libpq's parse errors (and a connect error on a host name that
        # is really the tail of a password with an unescaped '@') would quote the DSN.
        self._dsn_problem = dsn_problem(dsn)

    @property
    def up(self) -> bool | None:
        """Whether the last attempt to use the database worked; None before the first."""
        return self._up

    @contextmanager
    def session(self, timeout: float) -> Iterator[Session]:
        """Hold the connection for one cycle that must finish within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise CollectorError("busy", "another collector of this target is still running")
        try:
            conn = self._connect()
            yield Session(self, conn, deadline)
        finally:
            self._lock.release()

    def cancel(self) -> None:
        """Cancel whatever query is running now (used at shutdown)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel_safe(timeout=1.0)
            except Exception:  # best effort: the process is going away anyway
                log.debug("cancel failed on target %s", self.name, exc_info=True)

    def close(self) -> None:
        """Close the connection; the next session reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("close failed on target %s", self.name, exc_info=True)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        if self._dsn_problem is not None:
            self._up = False
            self.last_error = f"the DSN cannot be used: {self._dsn_problem}"
            raise CollectorError("connect", self.last_error)
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name=APPLICATION_NAME,
                # A path that dies silently (failover, NAT timeout) must fail the query in
                # seconds, not after the kernel's ~15 min retransmission timeout: otherwise
                # the target's lock is held and pg_up never drops.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
                # The monitor never writes to the database it watches.
                options="-c default_transaction_read_only=on -c statement_timeout=5000",
            )
        except psycopg.Error as exc:
            self._up = False
            self.last_error = f"cannot connect: {_first_line(exc)}"
            raise CollectorError("connect", self.last_error) from None
        self._conn = conn
        self._up = True
        self.server_version_num = conn.info.server_version
        return conn

    def _mark(self, up: bool, error: str | None = None) -> None:
        self._up = up
        self.last_error = error


class Session:
    """Queries within one sampling cycle, each bounded by the cycle's remaining time."""

    def __init__(self, target: PostgresTarget, conn: psycopg.Connection[tuple[Any, ...]],
                 deadline: float) -> None:
        self._target = target
        self._conn = conn
        self._deadline = deadline

    @property
    def server_version_num(self) -> int:
        """The server's version as a number, e.g. 150019."""
        return self._target.server_version_num

    def fetch(self, query: Query, params: Params | None = None, *,
              binary: bool = False) -> list[tuple[Any, ...]]:
        """Run one query and return its rows, or raise CollectorError.

        Every query runs in a transaction of its own that is READ ONLY by its BEGIN,
        whatever the session's defaults (a custom query may change those), with a
        statement_timeout local to it, and with the extended protocol, which refuses more
        than one statement. Pipeline mode sends all of it in one round trip.

        ``binary`` asks for results in binary format: cheaper to load for large results of
        numbers (the statements collector reads thousands of rows every cycle).
        """
        remaining_ms = int((self._deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise CollectorError("timeout", "the sampling cycle ran out of time")
        try:
            rows = self._run(query, params, binary, str(min(remaining_ms, 600_000)))
        except pg_errors.QueryCanceled:
            raise CollectorError("timeout", "a query hit the statement timeout") from None
        except pg_errors.InsufficientPrivilege as exc:
            # A privilege the monitoring role lacks: a grant to add, not a fault (README,
            # "Grants"); counted as reason="permission" and logged once by the job.
            raise CollectorError(
                "permission",
                f"not visible to role {self._conn.info.user!r}: {_first_line(exc)} "
                "(see the README's grants for the monitoring role)") from None
        except psycopg.OperationalError as exc:
            if self._conn.broken or self._conn.closed:
                message = f"connection lost: {_first_line(exc)}"
                self._target._mark(False, message)
                self._target.close()
                raise CollectorError("connect", message) from None
            raise CollectorError("query", _first_line(exc)) from None
        except psycopg.Error as exc:
            raise CollectorError("query", _first_line(exc)) from exc
        self._target._mark(True)
        return rows

    def _run(self, query: Query, params: Params | None, binary: bool,
             timeout_ms: str) -> list[tuple[Any, ...]]:
        conn = self._conn
        try:
            with conn.cursor(binary=binary) as cur:
                # All four go out together and are answered after one Sync (psycopg's
                # transaction() would add round trips).
                # A statement's error is kept and raised after the pipeline block: raised
                # inside it, psycopg would log a second, uninformative warning ("error
                # ignored terminating <Pipeline>: pipeline aborted") every failing cycle.
                failure: psycopg.Error | None = None
                try:
                    with conn.pipeline():
                        try:
                            conn.execute("BEGIN READ ONLY")
                            # A bound parameter keeps pg_stat_statements from recording one
                            # entry per distinct value.
                            conn.execute("SELECT set_config('statement_timeout', %s, true)",
                                         (timeout_ms,))
                            cur.execute(query, params)  # type: ignore[arg-type]
                            conn.execute("COMMIT")
                        except psycopg.Error as exc:
                            failure = exc
                except psycopg.Error as exc:
                    failure = failure or exc
                if failure is not None:
                    raise failure
                return cur.fetchall() if cur.description is not None else []
        except BaseException:
            # A failed statement skips the rest of the pipeline, COMMIT included: the
            # transaction stays open, aborted, until rolled back.
            if not (conn.broken or conn.closed) and \
                    conn.info.transaction_status != TransactionStatus.IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    log.debug("rollback failed on target %s", self._target.name,
                              exc_info=True)
            raise

    def columns(self, relation: LiteralString, schema: str = "pg_catalog") -> set[str]:
        """The column names of a view or table, to adapt to the server's version at run time."""
        rows = self.fetch(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, relation),
        )
        return {r[0] for r in rows}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
