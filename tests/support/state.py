"""Helpers for tests of the state stores, which run on both backends."""

from __future__ import annotations

from piggywatch.state import PostgresState, SQLiteState, StateStore


def reopen(state: StateStore) -> StateStore:
    """A second handle on the same state, as a restarted daemon (or another replica) opens
    it."""
    if isinstance(state, PostgresState):
        return PostgresState(state.url, schema=state.schema)
    assert isinstance(state, SQLiteState)
    return SQLiteState(state.path)
