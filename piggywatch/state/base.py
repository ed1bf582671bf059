"""The state database's interface: transactions of plain SQL both engines understand.

Every durable part of PiggyWatch (alert state, history, outbox, acks, silences, escalation
timers, edge watermarks) talks to the state database through a ``StateConn``: transactions
of plain SQL written once, in the subset SQLite and PostgreSQL share (``?`` placeholders,
``INSERT … ON CONFLICT``, ``RETURNING``). The tables come from numbered migrations
(``migrations.py``) applied once, in order, when the database is first opened. The engines
are in ``sqlite.py`` and ``postgres.py``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from piggywatch.state.migrations import (
    LATEST,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    Dialect,
    SchemaTooNew,
    ddl,
)

# What a state operation raises when the database fails (a PoolTimeout is an
# OperationalError too).
STATE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

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



class NotLeader(psycopg.Error):
    """A fenced transaction ran on a replica that does not hold the leadership lock."""



def migrate(tx: Tx, dialect: Dialect, where: str) -> list[int]:
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
