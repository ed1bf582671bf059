"""The state in a schema of a PostgreSQL database, shared by every replica.

The parts of PiggyWatch share a small connection pool; broken connections (a restarted
server, a terminated backend) are replaced by the pool. A fenced store runs the leadership
check in every transaction, so a replica that lost leadership cannot write.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg

from piggywatch.dsn import DsnError, parse_dsn
from piggywatch.state.base import StateConn, StateStore, Tx, instance_token, migrate
from piggywatch.state.migrations import Dialect

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "piggywatch"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Advisory lock keys are (class, object) pairs; the class says "PiggyWatch", the object
# which lock of which schema, so two PiggyWatch deployments on one database do not collide.
_LOCK_CLASS = 0x50575748  # "PWWH"


@lru_cache(maxsize=256)
def postgres_sql(sql: str) -> str:
    """A statement with ``?`` placeholders in psycopg's ``%s`` style (``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTx(Tx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._conn.execute(postgres_sql(sql), params)
        return cursor.fetchall() if cursor.description is not None else []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(postgres_sql(sql), params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with self._conn.cursor() as cursor:
            cursor.executemany(postgres_sql(sql), rows)
            return cursor.rowcount


Fence = Callable[[Tx], None]


class PostgresConn(StateConn):
    """A view on the store's pool: each transaction borrows a connection.

    With a ``fence``, every transaction first runs it (in the same transaction), and the
    fence raises ``NotLeader`` unless this replica's lock session still holds the
    leadership lock: a replica that lost leadership cannot write the leader's state, even
    in the moment before it notices.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, state: PostgresState, fence: Fence | None = None) -> None:
        self._state = state
        self._fence = fence

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Tx]:
        with self._state.pool().connection() as conn, conn.transaction():
            tx = _PostgresTx(conn)
            if self._fence is not None:
                self._fence(tx)
            yield tx


class PostgresState(StateStore):
    """The state in a schema of a PostgreSQL database, shared by every replica.

    The schema is created and migrated on first use, under a transaction-level advisory
    lock, so replicas starting together migrate once.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA, max_connections: int = 8,
                 connect_timeout: float = 5.0, takeover_after: float = 15.0) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"state schema {schema!r} must be a lower-case SQL identifier")
        try:
            self._params = parse_dsn(url)
        except DsnError as exc:
            # libpq's own message would quote the URL, password included.
            raise DsnError(f"state: the PostgreSQL URL cannot be used: {exc}") from None
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.takeover_after = float(takeover_after)
        self._max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._closed = False
        self._migrated = False
        self._lock = threading.Lock()

    def connection_kwargs(self, application_name: str) -> dict[str, Any]:
        """What every connection to the state database is opened with.

        Both ends give up on a peer that is gone (host down, network cut) within about
        0.7 ``takeover_after``: the server, so a dead leader's lock and transactions are
        released in time for a standby to take over; the client, so a query on a dead
        connection fails instead of hanging. The application_name is ``application_name``
        followed by ``/`` and this process's ``instance_token()``.
        """
        t = self.takeover_after
        idle, interval, count = max(1, int(0.3 * t)), max(1, int(0.1 * t)), 3
        user_timeout = max(1000, int(700 * t))
        return {"options": f"-c search_path={self.schema} -c tcp_keepalives_idle={idle} "
                           f"-c tcp_keepalives_interval={interval} "
                           f"-c tcp_keepalives_count={count} "
                           f"-c tcp_user_timeout={user_timeout}",
                "application_name": f"{application_name}/{instance_token()}",
                "connect_timeout": max(1, round(self.connect_timeout)),
                "keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval,
                "keepalives_count": count, "tcp_user_timeout": user_timeout}

    def lock_key(self, name: str) -> tuple[int, int]:
        """The (class, object) pair of a PiggyWatch advisory lock in this schema."""
        # Both halves below 2**31: pg_locks shows them as (unsigned) oids.
        objid = zlib.crc32(f"{self.schema}:{name}".encode()) & 0x7FFFFFFF
        return _LOCK_CLASS, objid

    def pool(self) -> ConnectionPool:
        """The shared pool, opened (and the schema migrated) on first use."""
        with self._lock:
            if self._closed:
                raise psycopg.OperationalError(f"{self.describe()}: the state store is closed")
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                pool: ConnectionPool = ConnectionPool(
                    self.url, kwargs=self.connection_kwargs("piggywatch-state"),
                    min_size=1, max_size=self._max_connections, open=False,
                    timeout=max(2.0, 2 * self.connect_timeout),
                    check=ConnectionPool.check_connection, name="piggywatch-state")
                pool.open(wait=False)
                self._pool = pool
            pool = self._pool
        if not self._migrated:
            self.migrate(pool)
        return pool

    def migrate(self, pool: ConnectionPool | None = None) -> list[int]:
        """Create the schema and apply missing migrations; the versions applied."""
        with (pool or self.pool()).connection() as conn:
            return self.migrate_on(conn)

    def migrate_on(self, conn: psycopg.Connection[Any]) -> list[int]:
        """``migrate`` on a given connection (the leadership session uses its own)."""
        if self._migrated:
            return []
        from psycopg import sql

        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", self.lock_key("migrate"))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)))
            applied = migrate(_PostgresTx(conn), "postgresql", self.describe())
        self._migrated = True
        if applied:
            log.info("state schema %s migrated to version %d", self.schema, applied[-1])
        return applied

    def connect(self, *, read_only: bool = False) -> StateConn:
        self.pool()
        return PostgresConn(self)

    def fenced(self, fence: Fence) -> StateStore:
        """This store, but every transaction of its connections runs ``fence`` first."""
        return _FencedPostgresState(self, fence)

    def describe(self) -> str:
        info = self._params
        return (f"postgresql://{info.get('host', 'localhost')}:{info.get('port', 5432)}/"
                f"{info.get('dbname', '')} (schema {self.schema})")

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._closed = True
        if pool is not None:
            pool.close()


class _FencedPostgresState(StateStore):
    dialect: Dialect = "postgresql"

    def __init__(self, state: PostgresState, fence: Fence) -> None:
        self._state = state
        self._fence = fence

    def connect(self, *, read_only: bool = False) -> StateConn:
        self._state.pool()
        return PostgresConn(self._state, self._fence)

    def describe(self) -> str:
        return self._state.describe()
