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

from piggywatch.state.base import (
    STATE_ERRORS,
    NotLeader,
    StateConn,
    StateLike,
    StateStore,
    Tx,
    instance_token,
)
from piggywatch.state.migrations import Dialect, SchemaTooNew
from piggywatch.state.postgres import PostgresState
from piggywatch.state.sqlite import SQLiteState
from piggywatch.state.sqlite_file import StateUnusable
from piggywatch.state.url import connect, open_state, sqlite_path, state_from_url

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
    "sqlite_path",
    "state_from_url",
]
