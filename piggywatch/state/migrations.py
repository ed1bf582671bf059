"""The state database's tables, as numbered migrations applied in order, once.

Written once in SQLite's dialect and translated for PostgreSQL (``REAL`` is a 4-byte float
there, so it becomes ``DOUBLE PRECISION``; ``INTEGER`` becomes ``BIGINT``; an
``AUTOINCREMENT`` key becomes an identity column; ``WITHOUT ROWID`` is dropped). A
migration is never edited once released: a change is a new migration at the end.

Migration 1 uses ``IF NOT EXISTS`` throughout, because state files written before
migrations were numbered already hold some of its tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its number, what it does, and its statements."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "alert state, history, outbox, acks, silences, escalations, edge watermarks", (
        # rules/state_db.py
        """CREATE TABLE IF NOT EXISTS alert_state (
            group_name TEXT NOT NULL,
            rule TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            state TEXT NOT NULL,
            active_at REAL NOT NULL,
            value REAL,
            fired_at REAL,
            resolved_at REAL,
            keep_firing_since REAL,
            PRIMARY KEY (group_name, rule, fingerprint)
        ) WITHOUT ROWID""",
        # store/history.py
        """CREATE TABLE IF NOT EXISTS history_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS history_series (
            id          INTEGER PRIMARY KEY,
            name        TEXT NOT NULL,
            labels_json TEXT NOT NULL,
            UNIQUE (name, labels_json)
        )""",
        """CREATE TABLE IF NOT EXISTS history_points (
            series_id INTEGER NOT NULL REFERENCES history_series (id),
            ts        REAL NOT NULL,
            value     REAL,
            PRIMARY KEY (series_id, ts)
        ) WITHOUT ROWID""",
        # alerting/outbox_store.py
        """CREATE TABLE IF NOT EXISTS outbox_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS outbox_items (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            id              TEXT NOT NULL UNIQUE,
            receiver        TEXT NOT NULL,
            incident        TEXT NOT NULL,
            created_at      REAL NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error      TEXT NOT NULL DEFAULT '',
            body            TEXT NOT NULL
        )""",
        """CREATE INDEX IF NOT EXISTS outbox_items_incident
            ON outbox_items (receiver, incident, seq)""",
        """CREATE TABLE IF NOT EXISTS outbox_done (
            id          TEXT PRIMARY KEY,
            finished_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX IF NOT EXISTS outbox_done_finished ON outbox_done (finished_at)",
        """CREATE TABLE IF NOT EXISTS outbox_receipts (
            receiver   TEXT NOT NULL,
            incident   TEXT NOT NULL,
            receipt    TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (receiver, incident)
        ) WITHOUT ROWID""",
        # alerting/acks.py
        """CREATE TABLE IF NOT EXISTS escalation_acks (
            incident TEXT PRIMARY KEY,
            fingerprint TEXT,
            acked_by TEXT NOT NULL,
            acked_at REAL NOT NULL,
            comment TEXT NOT NULL
        ) WITHOUT ROWID""",
        # alerting/escalation.py
        """CREATE TABLE IF NOT EXISTS escalation_incidents (
            incident TEXT PRIMARY KEY,
            route TEXT NOT NULL,
            group_labels TEXT NOT NULL,
            policy TEXT NOT NULL,
            started_at REAL NOT NULL,
            alerts TEXT NOT NULL,
            level INTEGER NOT NULL,
            repeats INTEGER NOT NULL,
            next_at REAL,
            acked INTEGER NOT NULL,
            notified TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS escalation_dispatch (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        # alerting/silences.py
        """CREATE TABLE IF NOT EXISTS silence_entries (
            id TEXT PRIMARY KEY,
            matchers TEXT NOT NULL,
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            created_by TEXT NOT NULL,
            comment TEXT NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID""",
        # collectors/edge_functions.py
        """CREATE TABLE IF NOT EXISTS edge_watermark (
            source TEXT PRIMARY KEY,
            settled_before TEXT NOT NULL,
            buckets TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS edge_settled (
            source TEXT NOT NULL,
            function TEXT NOT NULL,
            series TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (source, function, series)
        ) WITHOUT ROWID""",
    )),
    Migration(2, "the elected leader's address, for standbys forwarding API calls", (
        """CREATE TABLE IF NOT EXISTS ha_leader (
            id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
            instance TEXT NOT NULL,
            url      TEXT NOT NULL,
            since    REAL NOT NULL
        )""",
    )),
    Migration(3, "when an attempt at an outbox item began, so one replica claims each attempt", (
        # NULL: nobody is sending the item. Written by the compare-and-set claim before each
        # attempt, cleared when the attempt's outcome is recorded (alerting/outbox_store.py).
        "ALTER TABLE outbox_items ADD COLUMN sending_since REAL",
    )),
    Migration(4, "which process claimed an outbox item, so a dead claimant's wait is skipped", (
        # The claimant's instance token (piggywatch.state.instance_token), written with
        # sending_since by the claim: on PostgreSQL a claim whose token has no session left
        # in pg_stat_activity is taken over at once (alerting/outbox_store.py).
        "ALTER TABLE outbox_items ADD COLUMN claimed_by TEXT",
    )),
    Migration(5, "where acknowledgements came from, the ack log, and webhook deliveries seen", (
        # alerting/acks.py: api, cli, pagerduty, slack or email, and the person's id there.
        "ALTER TABLE escalation_acks ADD COLUMN source TEXT NOT NULL DEFAULT 'api'",
        "ALTER TABLE escalation_acks ADD COLUMN by_id TEXT NOT NULL DEFAULT ''",
        # Every acknowledgement that took effect, kept after its incident ended (the on-call
        # report): who, where, when, and how long after the first notification.
        """CREATE TABLE ack_log (
            id                INTEGER PRIMARY KEY AUTOINCREMENT,
            incident          TEXT NOT NULL,
            source            TEXT NOT NULL,
            acked_by          TEXT NOT NULL,
            by_id             TEXT NOT NULL,
            acked_at          REAL NOT NULL,
            comment           TEXT NOT NULL,
            first_notified_at REAL,
            seconds_to_ack    REAL
        )""",
        "CREATE INDEX ack_log_incident ON ack_log (incident, acked_at)",
        # ack/store.py: deliveries already applied (PagerDuty event ids, Slack action ids,
        # used ack-link tokens), so a redelivery or a second press changes nothing.
        """CREATE TABLE hook_events (
            source      TEXT NOT NULL,
            event_id    TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (source, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX hook_events_received ON hook_events (received_at)",
        # The other side's incident for ours (PagerDuty's id, for display) and when its last
        # applied change occurred there, so a change that arrives late is not applied.
        """CREATE TABLE hook_incidents (
            incident    TEXT NOT NULL,
            source      TEXT NOT NULL,
            external_id TEXT NOT NULL,
            status      TEXT NOT NULL,
            occurred_at REAL NOT NULL,
            PRIMARY KEY (incident, source)
        ) WITHOUT ROWID""",
        # "Silence until resolved": the silence ends when its incident does.
        """CREATE TABLE hook_silences (
            silence_id TEXT PRIMARY KEY,
            incident   TEXT NOT NULL
        ) WITHOUT ROWID""",
    )),
)

LATEST = MIGRATIONS[-1].version

# The table that records which migrations ran; created before any migration.
MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
)"""

_POSTGRES_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
)


def ddl(statement: str, dialect: Dialect) -> str:
    """A schema statement in the given dialect."""
    if dialect == "sqlite":
        return statement
    for pattern, replacement in _POSTGRES_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


class SchemaTooNew(RuntimeError):
    """The state database was migrated by a newer PiggyWatch than this one."""
