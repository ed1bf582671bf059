"""The state in one SQLite file (the default: one replica).

Each part of PiggyWatch gets its own connection to the file (WAL, so readers never block
the writer), guarded by a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from piggywatch.state.base import StateConn, StateStore, Tx, migrate
from piggywatch.state.migrations import Dialect, SchemaTooNew
from piggywatch.state.sqlite_file import (
    FileWatch,
    StateUnusable,
    explain_open_error,
    move_aside,
    unusable_path,
)

log = logging.getLogger(__name__)


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
                migrate(tx, "sqlite", str(path))
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
