"""The outbox's tables, on both backends: pending items survive a restart, finished ids and
receipts are remembered, and an incompatible outbox is refused."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from piggywatch.alerting.model import Action
from piggywatch.alerting.outbox_store import (
    SCHEMA_VERSION,
    Claim,
    OutboxSchemaError,
    OutboxStore,
    StoredItem,
    encode_notification,
)
from piggywatch.state import PostgresState, StateStore, instance_token
from tests.support.state import on_postgresql, on_sqlite, reopen
from tests.test_outbox import note

T0 = 1_764_000_000.25


def restarted(state: StateStore) -> tuple[StateStore, OutboxStore]:
    """The outbox as a restarted PiggyWatch (or another replica) opens it."""
    again = reopen(state)
    return again, OutboxStore(again)


def test_add_returns_seqs_in_order_and_none_for_a_duplicate(state: StateStore) -> None:
    store = OutboxStore(state)
    seqs = store.add([note("a"), note("b", receiver="slack"), note("a")], T0)
    assert seqs[2] is None
    first, second = seqs[0], seqs[1]
    assert first is not None and second is not None and first < second
    assert store.add([note("a")], T0 + 1) == [None], "already pending"
    [third] = store.add([note("c")], T0 + 2)
    assert third is not None and third > second
    store.close()


def test_an_id_finished_recently_is_not_added_again(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("a")], T0)
    [item] = store.load()
    store.finish(item, T0 + 1)
    assert store.load() == []
    assert store.add([note("a"), note("b")], T0 + 2)[0] is None
    assert [i.notification.id for i in store.load()] == ["b"]
    store.close()


def test_load_after_a_restart_returns_pending_items_oldest_first(state: StateStore) -> None:
    store = OutboxStore(state)
    notes = [note("n1", incident="inc-2"), note("n2"), note("n3", receiver="slack"),
             replace(note("n4", action=Action.RESOLVE), acked_by="ana", acked_at=T0 + 1.5,
                     level=3, external_url="https://pw.example.com")]
    seqs = store.add(notes[:2], T0)
    seqs += store.add(notes[2:], T0 + 10)
    assert seqs[0] is not None
    store.reschedule(seqs[0], 2, T0 + 30.125, "503 from the channel")
    store.close()

    again, store = restarted(state)
    try:
        items = store.load()
        assert [i.seq for i in items] == seqs
        assert [i.notification for i in items] == notes
        assert items[0] == StoredItem(seqs[0], notes[0], 2, T0 + 30.125, "503 from the channel")
        assert [(i.attempts, i.next_attempt_at, i.last_error) for i in items[1:]] == [
            (0, T0, ""), (0, T0 + 10, ""), (0, T0 + 10, "")]
        store.close()
    finally:
        again.close()


def test_finish_deletes_remembers_the_id_and_merges_receipts(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("t"), note("a", action=Action.ACKNOWLEDGE), note("x", incident="inc-2")],
              T0)
    trigger, ack, other = store.load()
    assert store.receipt("oncall", "inc-1") == {}
    store.finish(trigger, T0 + 1, receipt={"dedup_key": "k1", "ts": "1"})
    store.finish(ack, T0 + 2, receipt={"ts": "2"})
    assert store.receipt("oncall", "inc-1") == {"dedup_key": "k1", "ts": "2"}
    store.finish(other, T0 + 3)  # given up: no receipt recorded
    assert store.receipt("oncall", "inc-2") == {}
    assert store.load() == []
    conn = state.connect()
    assert conn.query("SELECT id, finished_at FROM outbox_done ORDER BY id") == [
        ("a", T0 + 2), ("t", T0 + 1), ("x", T0 + 3)]
    assert conn.query("SELECT receiver, incident, updated_at FROM outbox_receipts") == [
        ("oncall", "inc-1", T0 + 2)]
    # An empty receipt restarts the age of one already there, but creates none.
    store.add([note("r", action=Action.RESOLVE), note("y", incident="inc-3")], T0 + 4)
    resolve, y = store.load()
    store.finish(resolve, T0 + 5, receipt={})
    store.finish(y, T0 + 5, receipt={})
    assert conn.query("SELECT incident, updated_at FROM outbox_receipts") == [
        ("inc-1", T0 + 5)]
    conn.close()
    again, store2 = restarted(state)
    try:
        assert store2.receipt("oncall", "inc-1") == {"dedup_key": "k1", "ts": "2"}
        store2.close()
    finally:
        again.close()
    store.close()


def test_finishing_an_id_twice_keeps_the_later_time(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("a")], T0)
    [item] = store.load()
    store.finish(item, T0 + 1)
    store.finish(item, T0 + 7)
    conn = state.connect()
    assert conn.query("SELECT finished_at FROM outbox_done") == [(T0 + 7,)]
    conn.close()
    store.close()


def test_reschedule_records_the_attempt(state: StateStore) -> None:
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    store.reschedule(seq, 1, T0 + 1.5, "429")
    store.reschedule(seq, 2, T0 + 4.5, "timed out")
    [item] = store.load()
    assert (item.attempts, item.next_attempt_at, item.last_error) == (2, T0 + 4.5, "timed out")
    store.close()


def test_prune_forgets_old_ids_and_unused_receipts(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("old"), note("new", incident="inc-2"), note("busy", incident="inc-3")], T0)
    old, new, busy = store.load()
    store.finish(old, T0 + 1, receipt={"k": "1"})
    store.finish(new, T0 + 100, receipt={"k": "2"})
    store.finish(busy, T0 + 1, receipt={"k": "3"})
    store.add([note("busy-2", incident="inc-3")], T0 + 2)  # inc-3 still has a pending item
    store.prune(done_before=T0 + 50, receipts_before=T0 + 50)
    conn = state.connect()
    assert conn.query("SELECT id FROM outbox_done") == [("new",)]
    assert conn.query("SELECT incident FROM outbox_receipts ORDER BY incident") == [
        ("inc-2",), ("inc-3",)]
    conn.close()
    # A forgotten id may be enqueued again.
    assert store.add([note("old")], T0 + 200)[0] is not None
    store.close()


def test_the_schema_version_is_written_once_and_an_incompatible_one_refused(
        state: StateStore) -> None:
    OutboxStore(state).close()
    conn = state.connect()
    assert conn.query("SELECT key, value FROM outbox_meta") == [
        ("schema_version", str(SCHEMA_VERSION))]
    OutboxStore(state).close()  # a matching version opens again
    conn.execute("UPDATE outbox_meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    conn.close()
    again = reopen(state)
    try:
        with pytest.raises(OutboxSchemaError, match=f"schema version {SCHEMA_VERSION + 1}") as e:
            OutboxStore(again)
        assert state.describe() in str(e.value)
    finally:
        again.close()


def test_a_row_that_cannot_be_decoded_is_logged_and_kept(
        state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    store = OutboxStore(state)
    store.add([note("future"), note("today", incident="inc-2")], T0)
    body = encode_notification(note("future")).replace('"level":1', '"level":1,"colour":"red"')
    conn = state.connect()
    conn.execute("UPDATE outbox_items SET body = ? WHERE id = 'future'", (body,))
    store.close()
    again, store = restarted(state)
    try:
        with caplog.at_level(logging.ERROR, logger="piggywatch.alerting.outbox_store"):
            assert [i.notification.id for i in store.load()] == ["today"]
        assert "future" in caplog.text and "colour" in caplog.text
        assert state.describe() in caplog.text
        [today] = store.load()
        store.finish(today, T0 + 1)
        assert conn.query("SELECT id FROM outbox_items") == [("future",)]
        store.close()
    finally:
        again.close()
        conn.close()


def test_a_path_opens_a_sqlite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = OutboxStore(path)
    store.add([note("a")], T0)
    store.close()
    store = OutboxStore(path)
    assert store.where == path
    assert [i.notification.id for i in store.load()] == ["a"]
    store.close()


# -- claims: one attempt at a time across replicas

def sending_since(state: StateStore, seq: int) -> object:
    conn = state.connect()
    try:
        row = conn.one("SELECT sending_since FROM outbox_items WHERE seq = ?", (seq,))
        assert row is not None
        return row[0]
    finally:
        conn.close()


def test_a_claim_succeeds_once_and_a_second_claimant_waits_out_the_grace(
        state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("a")], T0)
    store.finish(StoredItem(0, note("earlier"), 0, T0, ""), T0, receipt={"dedup_key": "k"})
    [item] = store.load()
    assert sending_since(state, item.seq) is None
    again, other = restarted(state)
    try:
        claim = store.claim(item, T0 + 1.125, grace=30.0)
        assert claim == Claim("claimed", T0 + 1.125, {"dedup_key": "k"})
        assert sending_since(state, item.seq) == T0 + 1.125  # full precision on both
        [seen] = other.load()  # another replica still loads it, and must ask first
        assert other.claim(seen, T0 + 2, grace=30.0) == Claim("busy", T0 + 1.125)
        assert other.claim(seen, T0 + 31.124, grace=30.0).status == "busy"
        # The first claimant's own claim, whose outcome it could not record, is its own.
        assert store.claim(item, T0 + 5, grace=30.0, mine=T0 + 1.125).status == "claimed"
        assert other.claim(seen, T0 + 20, grace=30.0, mine=T0 + 1.125) == Claim("busy", T0 + 5)
        # A claim older than the grace is presumed dead: its sender crashed.
        assert other.claim(seen, T0 + 35, grace=30.0).status == "claimed"
        assert store.claim(item, T0 + 36, grace=30.0) == Claim("busy", T0 + 35)
        other.close()
    finally:
        again.close()
    store.close()


def test_a_claim_on_an_item_finished_elsewhere_finds_it_gone(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("a")], T0)
    [item] = store.load()
    again, other = restarted(state)
    try:
        [seen] = other.load()
        assert other.claim(seen, T0 + 1, grace=30.0).status == "claimed"
        other.finish(seen, T0 + 2, receipt={"ts": "1"})
        other.close()
    finally:
        again.close()
    assert store.claim(item, T0 + 3, grace=30.0) == Claim("gone")
    assert store.load() == []
    store.close()


def test_with_no_grace_a_claim_left_by_a_crashed_process_is_taken_at_once(
        state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("a")], T0)
    [item] = store.load()
    assert store.claim(item, T0 + 1, grace=0.0).status == "claimed"
    store.close()  # "kill -9": the claim stays
    again, store = restarted(state)
    try:
        [item] = store.load()
        assert sending_since(state, item.seq) == T0 + 1
        assert store.claim(item, T0 + 1, grace=0.0).status == "claimed"
        store.close()
    finally:
        again.close()


def test_reschedule_ends_the_attempts_claim_but_not_a_later_one(state: StateStore) -> None:
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    [item] = store.load()
    store.claim(item, T0 + 1, grace=30.0)
    store.reschedule(seq, 1, T0 + 5, "503", claim=T0 + 1)
    assert sending_since(state, seq) is None
    store.claim(item, T0 + 6, grace=30.0)
    store.reschedule(seq, 2, T0 + 9, "503")  # no claim given: cleared whoever claimed
    assert sending_since(state, seq) is None
    store.claim(item, T0 + 10, grace=0.0)
    store.claim(item, T0 + 11, grace=0.0)  # another replica took a stale claim over
    store.reschedule(seq, 3, T0 + 20, "timed out", claim=T0 + 10)
    assert sending_since(state, seq) == T0 + 11
    [row] = store.load()
    assert (row.attempts, row.next_attempt_at, row.last_error) == (3, T0 + 20, "timed out")
    store.close()


def test_expiry_spares_an_item_another_attempt_may_still_be_sending(state: StateStore) -> None:
    store = OutboxStore(state)
    store.add([note("busy"), note("idle", incident="inc-2"), note("done", incident="inc-3")],
              T0)
    busy, idle, done = store.load()
    store.claim(busy, T0 + 10, grace=30.0)
    store.claim(done, T0 + 10, grace=30.0)
    store.finish(done, T0 + 11)
    assert store.expire(busy, T0 + 20, claimed_before=T0 - 10) == "busy"
    assert store.expire(idle, T0 + 20, claimed_before=T0 - 10) == "expired"
    assert store.expire(done, T0 + 20, claimed_before=T0 - 10) == "gone"
    assert [i.notification.id for i in store.load()] == ["busy"]
    assert store.expire(busy, T0 + 50, claimed_before=T0 + 20) == "expired"
    assert store.load() == []
    conn = state.connect()
    assert conn.query("SELECT id FROM outbox_done ORDER BY id") == [
        ("busy",), ("done",), ("idle",)]
    conn.close()
    store.close()


# -- a claimant's liveness: its instance token in pg_stat_activity

DEAD = "0123456789ab"  # an instance token no process has


def claimed_by(state: StateStore, seq: int) -> object:
    conn = state.connect()
    try:
        row = conn.one("SELECT claimed_by FROM outbox_items WHERE seq = ?", (seq,))
        assert row is not None
        return row[0]
    finally:
        conn.close()


def claim_as(state: StateStore, seq: int, since: float, token: str) -> None:
    """Leave the item claimed at ``since`` by the process with ``token``."""
    conn = state.connect()
    try:
        conn.execute("UPDATE outbox_items SET sending_since = ?, claimed_by = ? WHERE seq = ?",
                     (since, token, seq))
    finally:
        conn.close()


def backends(state: PostgresState, token: str) -> int:
    with psycopg.connect(state.url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                           "LIKE 'piggywatch-%%/' || %s", (token,)).fetchone()
        assert row is not None
        return int(row[0])


def test_a_claim_records_the_claimants_instance_token(state: StateStore) -> None:
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    [item] = store.load()
    assert claimed_by(state, seq) is None
    assert store.claim(item, T0 + 1, grace=30.0).status == "claimed"
    assert claimed_by(state, seq) == instance_token()
    store.close()


@on_postgresql
def test_state_connections_carry_the_instance_token(state: StateStore) -> None:
    assert state.connection_kwargs("piggywatch-state")["application_name"] == \
        f"piggywatch-state/{instance_token()}"
    conn = state.connect()
    try:
        assert conn.one("SELECT current_setting('application_name')") == (
            f"piggywatch-state/{instance_token()}",)
    finally:
        conn.close()


@on_postgresql
def test_an_item_claimed_by_a_process_with_no_session_left_is_taken_over_at_once(
        state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="piggywatch.alerting.outbox_store")
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    [item] = store.load()
    claim_as(state, seq, T0 + 1, DEAD)
    assert backends(state, DEAD) == 0
    assert store.claim(item, T0 + 2, grace=30.0) == Claim("claimed", T0 + 2)
    assert (sending_since(state, seq), claimed_by(state, seq)) == (T0 + 2, instance_token())
    assert f"claimed at {T0 + 1:.3f} by process {DEAD}, which has no state database " \
        "session left; taking it over at once" in caplog.text
    store.close()


@on_postgresql
def test_an_item_claimed_by_a_live_process_waits_out_the_grace(
        state: StateStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="piggywatch.alerting.outbox_store")
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    [item] = store.load()
    live = "fedcba987654"
    claim_as(state, seq, T0 + 1, live)
    with psycopg.connect(state.url, application_name=f"piggywatch-leader/{live}"):
        assert store.claim(item, T0 + 2, grace=30.0) == Claim("busy", T0 + 1)
        assert store.claim(item, T0 + 30.9, grace=30.0) == Claim("busy", T0 + 1)
        assert f"claimed by live process {live}" in caplog.text
        assert (sending_since(state, seq), claimed_by(state, seq)) == (T0 + 1, live)
        assert store.claim(item, T0 + 31, grace=30.0).status == "claimed"  # the grace is over
    claim_as(state, seq, T0 + 40, live)
    # Its last session closed: the server drops the backend (asynchronously), then the
    # claim is taken over within the grace.
    deadline = time.monotonic() + 5
    while backends(state, live) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.claim(item, T0 + 41, grace=30.0) == Claim("claimed", T0 + 41)
    store.close()


@on_sqlite
def test_on_sqlite_a_claim_by_another_token_within_the_grace_waits(
        state: StateStore) -> None:
    store = OutboxStore(state)
    [seq] = store.add([note("a")], T0)
    assert seq is not None
    [item] = store.load()
    claim_as(state, seq, T0 + 1, DEAD)
    assert store.claim(item, T0 + 2, grace=30.0) == Claim("busy", T0 + 1)
    assert store.claim(item, T0 + 31, grace=30.0).status == "claimed"
    store.close()
