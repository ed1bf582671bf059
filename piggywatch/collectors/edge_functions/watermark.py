"""The watermark and settled totals of each edge source, kept in the state database."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from piggywatch.collectors.edge_functions.model import Totals
from piggywatch.state import StateConn, StateLike, connect

# What settle() did: saved the new watermark, left the database alone (a standby), or found
# the database's watermark elsewhere than the caller's (another replica settled meanwhile).
Settled = Literal["saved", "standby", "moved"]


class EdgeStateDB:
    """The watermark and settled totals of each edge source, in the state database (tables
    ``edge_*``).

    ``may_write`` says whether this replica persists: a standby of a high-availability pair
    reads the state at start but leaves it to the leader, keeping its own totals in memory.
    """

    def __init__(self, state: StateLike, *,
                 may_write: Callable[[], bool] = lambda: True) -> None:
        self._state = state
        self._connection: StateConn | None = None
        self._may_write = may_write

    @property
    def _conn(self) -> StateConn:
        # Connected on first use, so a state database that is down at start makes a failed
        # collection (retried), not a daemon that cannot start.
        if self._connection is None:
            self._connection = connect(self._state)
        return self._connection

    def load(self, source: str, buckets: Sequence[float]) -> tuple[datetime | None, Totals]:
        """The watermark and settled totals; histogram totals are dropped if buckets changed."""
        writing = self._may_write()
        with self._conn.transaction() as tx:
            row = tx.one("SELECT settled_before, buckets FROM edge_watermark WHERE source = ?",
                         (source,))
            if row is None:
                return None, {}
            changed = json.loads(row[1]) != list(buckets)
            if changed and writing:
                # Old bucket counts mean nothing under new bounds: restart the histogram
                # (a counter reset, which rate() handles) but keep invocation counts.
                tx.execute("DELETE FROM edge_settled WHERE source = ? AND "
                           "series NOT LIKE 'status:%'", (source,))
                tx.execute("UPDATE edge_watermark SET buckets = ? WHERE source = ?",
                           (json.dumps(list(buckets)), source))
            rows = tx.query("SELECT function, series, value FROM edge_settled WHERE source = ?",
                            (source,))
        # A standby drops the old histogram in memory only; the leader rewrites the state.
        totals = {(f, s): float(v) for f, s, v in rows
                  if not changed or s.startswith("status:")}
        return datetime.fromisoformat(row[0]), totals

    def settle(self, source: str, settled_before: datetime, added: Totals,
               buckets: Sequence[float], *, since: datetime | None) -> Settled:
        """Move the watermark from ``since`` and add the newly settled totals, atomically.

        Nothing is written when this replica may not write ("standby"), nor when the stored
        watermark is not ``since`` ("moved": another replica settled since this one last
        loaded or saved), as adding then would count rows twice or never.
        """
        if not self._may_write():
            return "standby"
        encoded = json.dumps(list(buckets))
        with self._conn.transaction() as tx:
            if since is None:
                moved = tx.execute(
                    "INSERT INTO edge_watermark (source, settled_before, buckets) "
                    "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (source, settled_before.isoformat(), encoded))
            else:
                moved = tx.execute(
                    "UPDATE edge_watermark SET settled_before = ?, buckets = ? "
                    "WHERE source = ? AND settled_before = ?",
                    (settled_before.isoformat(), encoded, source, since.isoformat()))
            if moved != 1:
                return "moved"
            tx.executemany(
                "INSERT INTO edge_settled (source, function, series, value) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (source, function, series) DO UPDATE "
                "SET value = edge_settled.value + excluded.value",
                [(source, f, s, v) for (f, s), v in added.items()])
        return "saved"

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
