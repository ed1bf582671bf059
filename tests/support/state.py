"""State fixtures for tests and benches: a second handle on a state store (a restart), a
table taken away for a moment (a state database that fails for real, on either backend)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from piggywatch.state import STATE_ERRORS, PostgresState, SQLiteState, StateStore


def reopen(state: StateStore) -> StateStore:
    """A second handle on the same state, as a restarted daemon (or another replica) opens
    it."""
    if isinstance(state, PostgresState):
        return PostgresState(state.url, schema=state.schema)
    assert isinstance(state, SQLiteState)
    return SQLiteState(state.path)


@contextmanager
def away(state: StateStore, table: str) -> Iterator[None]:
    """``table`` renamed for the duration, from a connection of its own: every statement on
    it fails for real (no such table), and works again once it is back."""
    renamed = f"{table}_away"
    if isinstance(state, PostgresState):
        with psycopg.connect(state.url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(state.schema)))
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(table), sql.Identifier(renamed)))
            try:
                yield
            finally:
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(renamed), sql.Identifier(table)))
        return
    assert isinstance(state, SQLiteState)
    db = sqlite3.connect(state.path, timeout=10, isolation_level=None)
    try:
        db.execute(f"ALTER TABLE {table} RENAME TO {renamed}")
        try:
            yield
        finally:
            db.execute(f"ALTER TABLE {renamed} RENAME TO {table}")
    finally:
        db.close()


def failing(call: Callable[[], object]) -> bool:
    """Run ``call``; whether it failed on the state database."""
    try:
        call()
    except STATE_ERRORS:
        return True
    return False


# For a test of the ``state`` fixture that only means something on one backend: it runs on
# that one alone instead of being skipped on the other.
on_postgresql = pytest.mark.parametrize("state", ["postgresql"], indirect=True)
on_sqlite = pytest.mark.parametrize("state", ["sqlite"], indirect=True)
