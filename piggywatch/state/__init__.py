"""The state database: a SQLite file (the default) or a PostgreSQL schema that replicas share.

Every durable part of PiggyWatch (alert state, history, outbox, acks, silences, escalation
timers, edge watermarks) talks to it through a ``StateConn``: transactions of plain SQL
written once, in the subset both engines understand (``?`` placeholders, ``INSERT … ON
CONFLICT``, ``RETURNING``). The tables come from numbered migrations (``migrations.py``)
applied once, in order, when the database is first opened.

SQLite: each part gets its own connection to the file (WAL, so readers never block the
writer), guarded by a lock. PostgreSQL: the parts share a small connection pool; broken
connections (a restarted server, a terminated backend) are replaced by the pool.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from piggywatch.dsn import DsnError, parse_dsn
from piggywatch.state.migrations import (
    LATEST,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    Dialect,
    SchemaTooNew,
    ddl,
)
from piggywatch.state.sqlite_file import (
    FileWatch,
    StateUnusable,
    explain_open_error,
    move_aside,
    unusable_path,
)

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = [
    "STATE_ERRORS",
    "Dialect",
    "NotLeader",
    "PostgresState",
    "SQLiteState",
    "SchemaTooNew",
    "StateConn",
    "StateLike",
    "StateStore",
    "StateUnusable",
    "Tx",
    "connect",
    "instance_token",
    "open_state",
    "state_from_url",
]

log = logging.getLogger(__name__)

# What a state operation raises when the database fails (a PoolTimeout is an
# OperationalError too).
STATE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

DEFAULT_SCHEMA = "piggywatch"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Advisory lock keys are (class, object) pairs; the class says "PiggyWatch", the object
# which lock of which schema, so two PiggyWatch deployments on one database do not collide.
_LOCK_CLASS = 0x50575748  # "PWWH"

# This process's random token, in the application_name of every state connection it opens
# ("piggywatch-state/<token>", "piggywatch-leader/<token>"): another replica can tell from
# pg_stat_activity whether the process that wrote a token (an outbox claim) still has a
# session. A forked child is another process and draws its own.
_instance_token = secrets.token_hex(6)


def _new_instance_token() -> None:
    global _instance_token
    _instance_token = secrets.token_hex(6)


os.register_at_fork(after_in_child=_new_instance_token)


def instance_token() -> str:
    """This process's token (12 hex digits), as in its state connections' application_name."""
    return _instance_token


class Tx:
    """One open transaction: run statements, read rows."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row the statement returns."""
        raise NotImplementedError

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row the statement returns, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement once per row of parameters; the number of rows changed."""
        raise NotImplementedError


class StateConn:
    """A connection to the state database that is safe to share between threads."""

    dialect: Dialect

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Tx]:
        """A transaction, committed when the block ends and rolled back if it raises.

        ``durable``: the commit must survive a power cut, not only a crash (SQLite waits
        for fsync; PostgreSQL always does unless its server says otherwise).
        """
        raise NotImplementedError
        yield  # pragma: no cover

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """``Tx.query`` in a transaction of its own."""
        with self.transaction() as tx:
            return tx.query(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """``Tx.one`` in a transaction of its own."""
        with self.transaction() as tx:
            return tx.one(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = (), *, durable: bool = False) -> int:
        """``Tx.execute`` in a transaction of its own."""
        with self.transaction(durable=durable) as tx:
            return tx.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], *,
                    durable: bool = False) -> int:
        """``Tx.executemany`` in a transaction of its own."""
        with self.transaction(durable=durable) as tx:
            return tx.executemany(sql, rows)

    def close(self) -> None:
        """Give the connection back; the database is consistent whenever this is skipped."""


class StateStore:
    """Where the state lives; hands out connections to it."""

    dialect: Dialect

    def connect(self, *, read_only: bool = False) -> StateConn:
        """A connection for one part of PiggyWatch (tables created on first use)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the state is, for messages (no password)."""
        raise NotImplementedError

    def check_usable(self) -> None:
        """Raise ``StateUnusable`` (which file, what is wrong, what to do) when the state
        cannot be used at start. A PostgreSQL state database that is down is not such a
        case: the daemon starts and waits for it."""

    def problem(self) -> str:
        """Why the state is not being kept now (a file deleted, replaced or read-only while
        running), or "" while it is."""
        return ""

    def close(self) -> None:
        """Close what this store holds open."""


StateLike = StateStore | str | Path


def open_state(state: StateLike) -> StateStore:
    """``state`` as a store: a store stays itself, a path is a SQLite file."""
    return state if isinstance(state, StateStore) else SQLiteState(state)


def connect(state: StateLike, *, read_only: bool = False) -> StateConn:
    """A connection to ``state`` (a store, or the path of a SQLite file)."""
    return open_state(state).connect(read_only=read_only)


def state_from_url(url: str, base_dir: Path, *, schema: str = DEFAULT_SCHEMA,
                   takeover_after: float = 15.0) -> StateStore:
    """The store a ``state:`` URL names; a relative SQLite path is taken from ``base_dir``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresState(url, schema=schema, takeover_after=takeover_after)
    path = sqlite_path(url)
    return SQLiteState(path if path.is_absolute() else base_dir / path)


def sqlite_path(state_url: str) -> Path:
    """``sqlite:///var/lib/x.db`` → ``/var/lib/x.db``; ``sqlite:///./x.db`` → ``./x.db``."""
    prefix = "sqlite://"
    if not state_url.startswith(prefix):
        raise ValueError("state must be a sqlite:/// or postgresql:// URL, got "
                         f"{state_url.split(':', 1)[0]}:…")
    rest = state_url[len(prefix):]
    return Path(rest[1:] if rest.startswith("/./") else rest)


def _migrate(tx: Tx, dialect: Dialect, where: str) -> list[int]:
    """Apply the migrations ``tx``'s database lacks, in order; the versions applied."""
    tx.execute(ddl(MIGRATIONS_TABLE, dialect))
    row = tx.one("SELECT max(version) FROM schema_migrations")
    current = int(row[0]) if row and row[0] is not None else 0
    if current > LATEST:
        raise SchemaTooNew(
            f"{where}: the state schema is at version {current}, this PiggyWatch knows up to "
            f"{LATEST}; run the newer PiggyWatch (downgrading the state is not supported)")
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            tx.execute(ddl(statement, dialect))
        tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                   (migration.version, migration.name, time.time()))
        applied.append(migration.version)
    return applied


# --- SQLite ------------------------------------------------------------------------------


class _SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, rows).rowcount


class SQLiteConn(StateConn):
    """One connection to the state file, guarded by a lock.

    Autocommit with explicit ``BEGIN IMMEDIATE`` transactions (the writer never has to
    upgrade a read lock, which is where SQLite deadlocks with another connection to the
    file), WAL so readers never block the writer, and a busy timeout so a writer waits for
    another part's transaction instead of failing.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path, *, read_only: bool = False,
                 busy_timeout_ms: int = 10_000, watch: FileWatch | None = None) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._watch = watch
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._durable: bool | None = None
        self._read_only = False
        try:
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            with self.transaction(durable=True) as tx:
                _migrate(tx, "sqlite", str(path))
            if read_only:
                self._conn.execute("PRAGMA query_only=1")
                self._read_only = True
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Tx]:
        with self._lock:
            if durable != self._durable:
                # FULL: the commit waits for fsync. NORMAL (in WAL mode) survives a crash of
                # the process, and the next FULL commit syncs what came before, in order.
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            changes = self._conn.total_changes
            try:
                # A reader's deferred BEGIN takes no write lock, so it never waits for a
                # writer.
                self._conn.execute("BEGIN" if self._read_only else "BEGIN IMMEDIATE")
                try:
                    yield _SQLiteTx(self._conn)
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._watch is not None:
                    self._watch.write_failed(exc)
                raise
            if self._watch is not None and self._conn.total_changes != changes:
                self._watch.written()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SQLiteState(StateStore):
    """The state in one SQLite file (the default: one replica)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._watch: FileWatch | None = None

    def connect(self, *, read_only: bool = False) -> StateConn:
        return SQLiteConn(self.path, read_only=read_only, watch=self._watch)

    def describe(self) -> str:
        return str(self.path)

    def check_usable(self) -> None:
        """Open (or create) the file, migrate it and check its integrity; from then on,
        watch that it stays there and writable (``problem``)."""
        path = self.path
        found = unusable_path(path)
        if found:
            raise StateUnusable(found)
        existed = path.exists()
        try:
            conn = SQLiteConn(path)
            try:
                row = conn.one("PRAGMA quick_check(1)")
            finally:
                conn.close()
        except SchemaTooNew as exc:
            raise StateUnusable(f"state file {exc}") from None
        except sqlite3.Error as exc:
            raise StateUnusable(explain_open_error(path, exc)) from None
        except OSError as exc:
            raise StateUnusable(f"state file {path}: cannot be created: {exc.strerror}") from None
        if row is None or row[0] != "ok":
            raise StateUnusable(f"state file {path}: is damaged (integrity check: "
                                f"{row[0] if row else 'no answer'}). " + move_aside(path))
        self._watch = FileWatch(path)
        if not existed:
            log.warning("no state file at %s: starting with an empty state (a new file was "
                        "created)", path)

    def problem(self) -> str:
        return self._watch.problem() if self._watch is not None else ""


# --- PostgreSQL --------------------------------------------------------------------------


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


class NotLeader(psycopg.Error):
    """A fenced transaction ran on a replica that does not hold the leadership lock."""


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
            applied = _migrate(_PostgresTx(conn), "postgresql", self.describe())
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
