"""Connections to the shared SQLite state file (alert state, history, outbox, acks, …)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def connect_state_file(path: str | Path, *, busy_timeout_ms: int = 5000,
                       synchronous: Literal["NORMAL", "FULL"] | None = "NORMAL",
                       ) -> sqlite3.Connection:
    """One connection to the state file, set up the way every part of PiggyWatch shares it.

    Autocommit (each part runs its own explicit transactions), usable from any thread (each
    part guards its connection with a lock), WAL so readers never block the writer, and a
    busy timeout: several parts write to the same file, so a writer waits for another's
    transaction instead of failing. ``synchronous=None`` leaves it to the caller, which
    sets it per transaction.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn
