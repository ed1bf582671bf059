"""Which store a ``state:`` setting names: a path, a ``sqlite:///`` or a PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path

from piggywatch.state.base import StateConn, StateLike, StateStore
from piggywatch.state.postgres import DEFAULT_SCHEMA, PostgresState
from piggywatch.state.sqlite import SQLiteState


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
