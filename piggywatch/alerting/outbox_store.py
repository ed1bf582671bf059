"""The outbox's tables in the state database: pending notifications, finished ids, receipts.

Tables are prefixed ``outbox_`` because the same state database holds other parts' tables;
the migrations in ``piggywatch.state.migrations`` create them. Every change is one
transaction. A new notification's is durable: acknowledged to the dispatcher, it must
survive a power cut, not only a crash.

Replicas sharing a PostgreSQL state database hand the outbox over from one leader to the
next. Before each attempt the sender *claims* the item (``claim``): a compare-and-set on the
row's ``sending_since``, so a new leader sees that the old one still has an attempt in
flight (and waits for it) or has finished the item (and drops it) instead of sending it a
second time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from piggywatch.alerting.model import Notification
from piggywatch.state import StateLike, StateStore, Tx, instance_token, open_state

__all__ = [
    "SCHEMA_VERSION",
    "Claim",
    "OutboxSchemaError",
    "OutboxStore",
    "StoredItem",
    "decode_notification",
    "encode_notification",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# An instance token as ``piggywatch.state.instance_token`` draws it: no LIKE wildcards.
_TOKEN = re.compile(r"^[0-9a-f]{1,64}$")


class OutboxSchemaError(RuntimeError):
    """The state database's outbox tables were written by an incompatible PiggyWatch."""


@dataclass(frozen=True)
class StoredItem:
    """A pending notification as the state database holds it."""

    seq: int
    notification: Notification
    attempts: int
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True)
class Claim:
    """What claiming an item for an attempt found.

    ``claimed``: the attempt is ours, and ``receipt`` is the incident's receipt to send
    with. ``gone``: the item is no longer pending (another replica finished it). ``busy``:
    another attempt, recorded at ``sending_since``, is presumed still in flight.
    """

    status: Literal["claimed", "gone", "busy"]
    sending_since: float | None = None
    receipt: dict[str, str] = field(default_factory=dict)


class OutboxStore:
    """The outbox tables behind one connection, safe to share between threads.

    Only a new notification is committed durably (SQLite waits for fsync). Losing a
    deletion or a retry count sends a notification again, which its dedup key makes
    harmless, so those commits skip the fsync; the next durable commit syncs them too, in
    order.

    ``lock`` serializes this process's writes; two stores on one database (the leader's
    fenced one and an unfenced one, say) share one.
    """

    def __init__(self, state: StateLike, *, lock: threading.Lock | None = None) -> None:
        store = open_state(state)
        # A store made here from a path is ours to close; a store handed in is the caller's.
        self._owned: StateStore | None = None if isinstance(state, StateStore) else store
        self.where = store.describe()
        self._conn = store.connect()
        # Serializes this process's writes: a notification re-enqueued while it is being
        # finished, or two receipts of one incident merged at once, cannot interleave.
        self.lock = lock or threading.Lock()
        self._lock = self.lock
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    def _check_schema(self) -> None:
        with self._conn.transaction(durable=True) as tx:
            # DO NOTHING: replicas opening a fresh database together both get here.
            tx.execute("INSERT INTO outbox_meta (key, value) VALUES ('schema_version', ?) "
                       "ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),))
            row = tx.one("SELECT value FROM outbox_meta WHERE key = 'schema_version'")
        if row is not None and row[0] != str(SCHEMA_VERSION):
            raise OutboxSchemaError(
                f"{self.where}: outbox tables have schema version {row[0]}, this PiggyWatch "
                f"reads version {SCHEMA_VERSION}; run a matching PiggyWatch until the "
                "outbox is empty (piggywatch_outbox_depth 0) before upgrading")

    def add(self, notifications: Sequence[Notification], now: float) -> list[int | None]:
        """Commit new pending items in one transaction; each one's seq, or None where the id
        is already pending or was finished recently."""
        bodies = [encode_notification(n) for n in notifications]
        seqs: list[int | None] = []
        with self._lock, self._conn.transaction(durable=True) as tx:
            for n, body in zip(notifications, bodies, strict=True):
                if tx.one("SELECT 1 FROM outbox_done WHERE id = ?", (n.id,)) is not None:
                    seqs.append(None)
                    continue
                row = tx.one(
                    "INSERT INTO outbox_items (id, receiver, incident, created_at, "
                    "next_attempt_at, body) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING RETURNING seq",
                    (n.id, n.receiver, n.incident, n.created_at, now, body))
                seqs.append(None if row is None else int(row[0]))
        return seqs

    def load(self) -> list[StoredItem]:
        """Every pending item, oldest first; rows that cannot be read are logged and kept."""
        rows = self._conn.query(
            "SELECT seq, id, receiver, attempts, next_attempt_at, last_error, body "
            "FROM outbox_items ORDER BY seq")
        items = []
        for seq, item_id, receiver, attempts, next_at, last_error, body in rows:
            try:
                notification = decode_notification(body)
            except (ValueError, TypeError, KeyError) as exc:
                log.error("outbox item %s for receiver %s cannot be read (%s); it stays in %s "
                          "for a PiggyWatch that can", item_id, receiver, exc, self.where)
                continue
            items.append(StoredItem(int(seq), notification, int(attempts), float(next_at),
                                    str(last_error)))
        return items

    def receipt(self, receiver: str, incident: str) -> dict[str, str]:
        """What earlier accepted deliveries of the incident to the receiver returned."""
        row = self._conn.one(
            "SELECT receipt FROM outbox_receipts WHERE receiver = ? AND incident = ?",
            (receiver, incident))
        return {} if row is None else dict(json.loads(row[0]))

    def claim(self, item: StoredItem, now: float, grace: float, *,
              mine: float | None = None) -> Claim:
        """Claim the item for an attempt starting at ``now``, in a transaction of its own.

        The claim takes an item that nobody is sending, one whose recorded attempt began
        ``grace`` seconds ago or more (presumed over: its sender died), or one whose recorded
        attempt is ``mine`` (this process's own earlier claim, whose outcome could not be
        recorded). On PostgreSQL it also takes, at once, an item claimed within the grace by
        another process that has no session left in ``pg_stat_activity`` (its claim records
        the process's ``instance_token``): that process is dead, or was cut off long enough
        for the server to drop its sessions, so nothing of its attempt can still be in
        flight. A claimed item comes with its incident's receipt, read in the same
        transaction.
        """
        n = item.notification
        token = instance_token()
        with self._lock, self._conn.transaction(durable=False) as tx:
            row = tx.one(
                "UPDATE outbox_items SET sending_since = ?, claimed_by = ? WHERE seq = ? AND "
                "(sending_since IS NULL OR sending_since <= ? OR sending_since = ?) "
                "RETURNING seq", (now, token, item.seq, now - grace, mine))
            if row is None:
                current = tx.one(
                    "SELECT sending_since, claimed_by FROM outbox_items WHERE seq = ?",
                    (item.seq,))
                if current is None:
                    return Claim("gone")
                since, claimant = current
                if not self._claimant_gone(tx, claimant, token):
                    if claimant is not None and self._conn.dialect == "postgresql":
                        log.info("outbox: notification %s to %s is claimed by live process "
                                 "%s since %.3f; waiting for its attempt", n.id, n.receiver,
                                 claimant, since)
                    return Claim("busy", None if since is None else float(since))
                row = tx.one(
                    "UPDATE outbox_items SET sending_since = ?, claimed_by = ? WHERE seq = ? "
                    "AND sending_since = ? AND claimed_by = ? RETURNING seq",
                    (now, token, item.seq, since, claimant))
                if row is None:  # another replica took it over meanwhile
                    return Claim("busy", None if since is None else float(since))
                log.info("outbox: notification %s to %s was claimed at %.3f by process %s, "
                         "which has no state database session left; taking it over at once",
                         n.id, n.receiver, since, claimant)
            found = tx.one(
                "SELECT receipt FROM outbox_receipts WHERE receiver = ? AND incident = ?",
                (n.receiver, n.incident))
        return Claim("claimed", now, {} if found is None else dict(json.loads(found[0])))

    def _claimant_gone(self, tx: Tx, claimant: str | None, token: str) -> bool:
        """Whether the process that wrote ``claimant`` has no PostgreSQL session left."""
        if self._conn.dialect != "postgresql" or claimant is None or claimant == token:
            return False
        if not _TOKEN.match(claimant):
            return False
        alive = tx.one("SELECT 1 FROM pg_stat_activity WHERE application_name LIKE "
                       "'piggywatch-%/' || ? LIMIT 1", (claimant,))
        return alive is None

    def expire(self, item: StoredItem, now: float, *,
               claimed_before: float) -> Literal["expired", "gone", "busy"]:
        """Give an item up without an attempt (it is too old): delete it and remember its id;
        but not while an attempt recorded after ``claimed_before`` may still be in flight
        (``busy``: its sender records the outcome), nor once it is no longer pending
        (``gone``)."""
        with self._lock, self._conn.transaction(durable=False) as tx:
            deleted = tx.execute(
                "DELETE FROM outbox_items WHERE seq = ? AND "
                "(sending_since IS NULL OR sending_since <= ?)", (item.seq, claimed_before))
            if not deleted:
                exists = tx.one("SELECT 1 FROM outbox_items WHERE seq = ?", (item.seq,))
                return "gone" if exists is None else "busy"
            tx.execute("INSERT INTO outbox_done (id, finished_at) VALUES (?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at",
                       (item.notification.id, now))
        return "expired"

    def finish(self, item: StoredItem, now: float, *,
               receipt: Mapping[str, str] | None = None) -> None:
        """Delete a finished item and remember its id; ``receipt`` (accepted items only) is
        merged into the incident's receipt, whose age restarts even when it is empty."""
        n = item.notification
        with self._lock, self._conn.transaction(durable=False) as tx:
            tx.execute("DELETE FROM outbox_items WHERE seq = ?", (item.seq,))
            tx.execute("INSERT INTO outbox_done (id, finished_at) VALUES (?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET finished_at = excluded.finished_at",
                       (n.id, now))
            if receipt is None:
                return
            row = tx.one(
                "SELECT receipt FROM outbox_receipts WHERE receiver = ? AND incident = ?",
                (n.receiver, n.incident))
            if row is None and not receipt:
                return
            merged = {} if row is None else dict(json.loads(row[0]))
            merged.update(receipt)
            tx.execute(
                "INSERT INTO outbox_receipts (receiver, incident, receipt, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (receiver, incident) DO UPDATE SET "
                "receipt = excluded.receipt, updated_at = excluded.updated_at",
                (n.receiver, n.incident, json.dumps(merged, sort_keys=True), now))

    def reschedule(self, seq: int, attempts: int, next_attempt_at: float, error: str, *,
                   claim: float | None = None) -> None:
        """Record a failed attempt, when to try again, and that the attempt is over: the
        item's ``sending_since`` goes back to NULL (unless ``claim``, the attempt's claim, is
        given and another attempt has claimed the item since)."""
        with self._lock:
            self._conn.execute(
                "UPDATE outbox_items SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                "sending_since = CASE WHEN sending_since = ? THEN NULL "
                "WHEN ? THEN sending_since ELSE NULL END WHERE seq = ?",
                (attempts, next_attempt_at, error, claim, claim is not None, seq),
                durable=False)

    def prune(self, done_before: float, receipts_before: float) -> None:
        """Forget finished ids and unused receipts of incidents with nothing pending."""
        with self._lock, self._conn.transaction(durable=False) as tx:
            tx.execute("DELETE FROM outbox_done WHERE finished_at < ?", (done_before,))
            tx.execute(
                "DELETE FROM outbox_receipts WHERE updated_at < ? AND NOT EXISTS (SELECT 1 "
                "FROM outbox_items i WHERE i.receiver = outbox_receipts.receiver "
                "AND i.incident = outbox_receipts.incident)", (receipts_before,))

    def close(self) -> None:
        """Close the connection; the database is consistent whenever this is skipped."""
        with self._lock:
            self._conn.close()
            if self._owned is not None:
                self._owned.close()


# The codec follows the dataclasses' type hints, so a field added to the model is stored
# without touching this file, and a row written before the field existed takes its default.

_FORMAT = 1


def encode_notification(notification: Notification) -> str:
    """The notification as JSON (format 1), ASCII only: a lone surrogate in a label or an
    annotation (half an emoji) has a JSON escape but no UTF-8 encoding, and an item that
    cannot be stored would fail every dispatch pass."""
    return json.dumps({"format": _FORMAT, "notification": _plain(notification)},
                      separators=(",", ":"))


def decode_notification(text: str) -> Notification:
    """The notification ``encode_notification`` wrote; ValueError if this version cannot."""
    data = json.loads(text)
    if data.get("format") != _FORMAT:
        raise ValueError(f"unknown outbox format {data.get('format')!r}")
    notification = _build(Notification, data["notification"])
    assert isinstance(notification, Notification)
    return notification


_LEAVES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    # Leaves first, by exact type (a StrEnum is no leaf): a storm's notification carries a
    # hundred alerts, and its strings are most of what is walked.
    kind: type = type(value)
    if kind in _LEAVES:
        return value
    if kind is dict:
        return {k: _plain(v) for k, v in value.items()}
    names = _field_names(kind)
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, Enum):  # before str: the model's enums are StrEnums
        return value.value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass, in order; None for any other type."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _build(tp: Any, data: Any) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(tp) if a is not type(None)]
        if data is None and len(options) < len(get_args(tp)):
            return None
        if len(options) != 1:
            raise TypeError(f"cannot decode a value of type {tp}")
        return _build(options[0], data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {tp.__name__}")
        hints = _hints(tp)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(tp)})
        if unknown:
            raise ValueError(f"{tp.__name__} has no fields {unknown} (a newer PiggyWatch?)")
        return tp(**{name: _build(hints[name], value) for name, value in data.items()})
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in data)
        return tuple(_build(a, v) for a, v in zip(args, data, strict=True))
    if origin is Mapping or origin is dict:
        key_type, value_type = get_args(tp)
        return {_build(key_type, k): _build(value_type, v) for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    if tp is float and type(data) in (int, float):
        return float(data)  # JSON writes 5.0 as 5
    if tp in (str, int, bool) and type(data) is tp:
        return data
    raise TypeError(f"cannot decode {data!r} as {tp}")
