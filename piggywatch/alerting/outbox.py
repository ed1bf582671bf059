"""The durable outbox: the only way a notification leaves.

A notification is committed to the state database before any attempt to send it and deleted
only once its channel accepted it or refused it for good, so a crash at any moment leaves it
pending and the next start sends it (again: dedup keys make a resend harmless).

Each receiver has a lane: its pending items, its throttle and its own sender thread, so an
SMTP server hanging for its whole timeout never delays a page. Within a lane, the items of
one incident go strictly in the order they were enqueued (an acknowledge or a resolve never
overtakes its trigger, even while the trigger is being retried); the items of different
incidents go oldest first, and one that is being retried holds up no other incident.

Replicas (high availability) hand the outbox over from one leader to the next without
sending anything twice: before each attempt the sender claims the item in the state
database, on the leader's fenced store (a replica that lost the lock claims nothing, so it
sends nothing). An item the claim finds finished elsewhere is dropped; one whose attempt by
another replica is presumed still in flight (``in_flight_grace``) waits for it, holding up
the rest of its incident like an item being retried. The outcome of an attempt made is
always recorded, through an unfenced store, even by a replica that lost the lock
meanwhile: that is how the next leader learns the item was sent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from piggywatch.alerting.inbox import FailureSink
from piggywatch.alerting.model import Delivery, Notification, Notifier, Outcome
from piggywatch.alerting.outbox_lane import Lane, PendingItem
from piggywatch.alerting.outbox_metrics import SPECS, STORE_KEY, OutboxMetrics
from piggywatch.alerting.outbox_store import Claim, OutboxStore
from piggywatch.state import STATE_ERRORS, NotLeader, StateLike
from piggywatch.store.samples import Sample

__all__ = ["SPECS", "STORE_KEY", "Outbox"]

log = logging.getLogger(__name__)

MAX_AGE = 24 * 3600.0
# How often an item another replica is sending is looked at again.
BUSY_RECHECK_SECONDS = 2.0

# A lane looks again at least this often even when nobody wakes it: the wall clock may have
# jumped, or may_send() may have turned true again (leadership regained).
_IDLE_WAIT = 1.0
_HOUSEKEEPING_EVERY = 60.0
_UNKNOWN_LOG_EVERY = 3600.0


class Outbox:
    """Pending notifications in the state database, delivered by one sender thread per
    receiver.

    ``state`` is the state database (a store, or the path of a SQLite file). ``throttles``
    holds, per receiver, the minimum seconds from the end of one request to the start of
    the next (each channel declares its own: ``channel_throttles``). ``may_send`` is asked
    before every attempt, so a replica that lost leadership stops at once; then the attempt
    is claimed in ``state``, whose transactions fail on such a replica when it is the
    leader's fenced store.
    ``completion_state`` (default: ``state``) records the outcomes of attempts made: an
    unfenced store, so that they are recorded even after leadership was lost.
    ``in_flight_grace``: for how many seconds after its claim another process's attempt is
    presumed still in flight (waited for rather than repeated); longer than any request to a
    channel takes, plus the clocks' skew between replicas. 0 (one replica) retries at once
    an item left claimed by a crash. ``failures`` (delivery's inbox) is handed, as data, every
    notification given up: refused for good, or still undelivered ``max_age``
    seconds after its creation. A failed attempt is retried after the channel's Retry-After,
    else after an exponential backoff with full jitter (``backoff_base`` doubling up to
    ``backoff_cap``), for as long as ``max_age`` allows.
    """

    def __init__(
        self,
        state: StateLike,
        notifiers: Mapping[str, Notifier],
        *,
        clock: Callable[[], float] = time.time,
        failures: FailureSink | None = None,
        may_send: Callable[[], bool] = lambda: True,
        throttles: Mapping[str, float] | None = None,
        max_age: float = MAX_AGE,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        receipt_retention: float = 7 * 86400.0,
        rng: random.Random | None = None,
        completion_state: StateLike | None = None,
        in_flight_grace: float = 0.0,
    ) -> None:
        # Claims, new items, expiry and pruning: the leader's (possibly fenced) store.
        self._store = OutboxStore(state)
        # The outcomes of attempts made: a store that records them whoever leads.
        self._done = self._store
        if completion_state is not None and completion_state is not state:
            try:
                self._done = OutboxStore(completion_state, lock=self._store.lock)
            except BaseException:
                self._store.close()
                raise
        self._grace = max(0.0, float(in_flight_grace))
        self._clock = clock
        self._failures = failures
        self._may_send = may_send
        self._max_age = max_age
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._receipt_retention = receipt_retention
        self._rng = rng or random.Random()
        # Guards the lanes and counters; taken before the store's own lock, never after.
        self._lock = threading.Lock()
        self._lanes: dict[str, Lane] = {}
        self._notifiers: dict[str, Notifier] = {}
        self._throttles: dict[str, float] = {}
        self._metrics = OutboxMetrics()
        self._unknown_logged: dict[str, float] = {}
        self._started = False
        self._drain_deadline: float | None = None  # monotonic; set by stop()
        self._stopped = threading.Event()
        self._closed = False
        # Attempts between their claim and their recorded outcome: close() leaves the
        # completion store open for them, and the last one closes it.
        self._attempting = 0
        # seq -> this process's claim (its sending_since) on items whose attempt's outcome
        # is not recorded yet; only the item's lane's sender thread touches its entry.
        self._claims: dict[int, float] = {}
        self._housekeeper: threading.Thread | None = None
        self.reconfigure(notifiers, throttles)
        stored = self._store.load()
        with self._lock:
            for row in stored:
                self._lane(row.notification.receiver).add(PendingItem.from_stored(row))
        if stored:
            log.info("outbox %s: resuming %d pending notifications", self._store.where,
                     len(stored))
        self._log_unknown_receivers(self._clock())

    # -- the dispatcher's side

    def enqueue(self, notification: Notification) -> bool:
        """Commit a notification and wake its receiver's sender.

        Returns False, changing nothing, when this id is already pending or was finished
        within ``max_age``.
        """
        return self.enqueue_many([notification])[0]

    def enqueue_many(self, notifications: Sequence[Notification]) -> list[bool]:
        """``enqueue`` for several notifications (say, one escalation step's receivers),
        committed together: one disk sync instead of one each."""
        now = self._clock()
        # One lock around the insert and the lanes: two threads enqueueing a trigger and its
        # acknowledge cannot put them in the lane in another order than their seqs.
        with self._lock:
            seqs = self._store.add(notifications, now)
            lanes = []
            for seq, notification in zip(seqs, notifications, strict=True):
                if seq is not None:
                    lanes.append(lane := self._lane(notification.receiver))
                    lane.add(PendingItem(seq, notification, next_at=now))
        if any(lane.notifier is None for lane in lanes):
            self._log_unknown_receivers(now)
        for lane in lanes:
            lane.wakeup.set()
        return [seq is not None for seq in seqs]

    def wake(self) -> None:
        """Make every sender look for due items now."""
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.wakeup.set()

    def pending(self, receiver: str | None = None) -> list[Notification]:
        """The notifications waiting (or being sent), oldest first."""
        with self._lock:
            lanes = [lane for name, lane in self._lanes.items()
                     if receiver is None or name == receiver]
            items = [item for lane in lanes for item in lane.items()]
        return [item.notification for item in sorted(items, key=lambda i: i.seq)]

    def reconfigure(self, notifiers: Mapping[str, Notifier],
                    throttles: Mapping[str, float] | None = None) -> None:
        """Use a new set of receivers (after a reload). Items of a receiver that went away
        wait for it to come back, or expire; they are never silently dropped."""
        with self._lock:
            self._notifiers = dict(notifiers)
            self._throttles = dict(throttles or {})
            for name in set(self._lanes) | set(notifiers):
                lane = self._lane(name)
                lane.notifier = self._notifiers.get(name)
                lane.throttle = max(0.0, self._throttles.get(name, 0.0))
                if lane.notifier is not None:
                    self._metrics.add_receiver(name)
                self._start_sender(lane)
        self.wake()

    # -- lifecycle

    def start(self) -> None:
        """Start the senders, and the housekeeping that runs every minute."""
        with self._lock:
            if self._started:
                return
            self._started = True
            for lane in self._lanes.values():
                self._start_sender(lane)
            self._housekeeper = threading.Thread(
                target=self._housekeep_loop, name="outbox-housekeeping", daemon=True)
            self._housekeeper.start()

    def stop(self, grace: float) -> None:
        """Keep delivering for up to ``grace`` seconds, until nothing more can go out in that
        time, then stop. What is left stays in the state database for the next start (a
        send still in flight records its outcome when it returns)."""
        deadline = time.monotonic() + max(0.0, grace)
        with self._lock:
            self._drain_deadline = deadline
            senders = [lane.thread for lane in self._lanes.values() if lane.thread]
        self.wake()
        for thread in senders:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stopped.set()
        self.wake()
        # Idle senders leave at once; one still alive after this is inside a send().
        settle = time.monotonic() + 0.2
        for thread in senders:
            thread.join(max(0.0, settle - time.monotonic()))
        stuck = [t.name for t in senders if t.is_alive()]
        if stuck:
            log.warning("outbox stopped while %s still waited for their channel; those "
                        "notifications stay pending unless the channel answers, whose answer "
                        "is still recorded", ", ".join(stuck))

    def close(self) -> None:
        """Stop at once (if running) and close the connections to the state database. A
        send still in flight has its outcome recorded when it returns (the completion
        store closes after it)."""
        if self._started and not self._stopped.is_set():
            self.stop(0.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._attempting == 0
        if self._done is not self._store:
            self._store.close()
        if idle:
            self._done.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- metrics

    def samples(self, now: float) -> list[Sample]:
        """The outbox's metrics (see ``SPECS``), for ``MemoryStore.publish(STORE_KEY, …)``."""
        with self._lock:
            return self._metrics.samples(now, self._lanes.values())

    # -- housekeeping

    def housekeep(self) -> None:
        """Give up items older than ``max_age``, forget old finished ids and unused receipts,
        and log receivers that have items but no configuration. Runs every minute; a replica
        that may not send (see ``may_send``) gives nothing up and forgets nothing."""
        now = self._clock()
        if self._allowed():
            try:
                self._expire_and_prune(now)
            except NotLeader as exc:
                # Items taken out for expiry stay in the database, for the leader.
                log.info("outbox: housekeeping gives nothing up: %s", exc)
        with self._lock:
            for name in [n for n, lane in self._lanes.items()
                         if lane.size == 0 and lane.notifier is None]:
                del self._lanes[name]
        self._log_unknown_receivers(now, every=_UNKNOWN_LOG_EVERY)

    def _expire_and_prune(self, now: float) -> None:
        expired: list[PendingItem] = []
        with self._lock:
            for lane in self._lanes.values():
                # Taken out of the lane at once, so its sender cannot pick them meanwhile.
                expired.extend(lane.take_expired(now - self._max_age))
        for item in expired:
            n = item.notification
            found = self._store.expire(item.stored(), now, claimed_before=now - self._grace)
            if found == "expired":
                with self._lock:
                    self._metrics.count(n.receiver, "failed")
                self._report_failure(n, self._expiry(item, now))
            elif found == "gone":
                log.info("notification %s (%s, incident %s) to receiver %s was finished by "
                         "another replica", n.id, n.action.value, n.incident, n.receiver)
            else:
                # Its sender records the outcome; a retry is given up by whoever loads it next.
                log.info("notification %s (%s, incident %s) to receiver %s expired while "
                         "another replica is sending it; that replica records the outcome",
                         n.id, n.action.value, n.incident, n.receiver)
        self._store.prune(done_before=now - self._max_age,
                          receipts_before=now - self._receipt_retention)

    def _housekeep_loop(self) -> None:
        while not self._stopped.wait(_HOUSEKEEPING_EVERY):
            try:
                self.housekeep()
            except Exception:
                log.exception("outbox housekeeping failed; it runs again in a minute")

    def _log_unknown_receivers(self, now: float, every: float = float("inf")) -> None:
        with self._lock:
            waiting = {name: lane.size for name, lane in self._lanes.items()
                       if lane.notifier is None and lane.size}
            due = {name: size for name, size in waiting.items()
                   if name not in self._unknown_logged
                   or now - self._unknown_logged[name] >= every}
            for name in due:
                self._unknown_logged[name] = now
            for name in set(self._unknown_logged) - set(waiting):
                del self._unknown_logged[name]
        for name, size in sorted(due.items()):
            log.warning("outbox: %d notifications wait for receiver %r, which is not "
                        "configured; they are kept until it is again, or for %.0f h after "
                        "their creation", size, name, self._max_age / 3600)

    # -- the senders

    def _lane(self, receiver: str) -> Lane:
        """The receiver's lane, created on first use; call with the lock held."""
        lane = self._lanes.get(receiver)
        if lane is None:
            lane = self._lanes[receiver] = Lane(receiver)
            lane.notifier = self._notifiers.get(receiver)
            lane.throttle = max(0.0, self._throttles.get(receiver, 0.0))
            self._start_sender(lane)
        return lane

    def _start_sender(self, lane: Lane) -> None:
        """Start the lane's thread if it should run and does not; call with the lock held."""
        if (not self._started or self._stopped.is_set() or lane.notifier is None
                or (lane.thread is not None and lane.thread.is_alive())):
            return
        lane.thread = threading.Thread(target=self._send_loop, args=(lane,),
                                       name=f"outbox-{lane.receiver}", daemon=True)
        lane.thread.start()

    def _draining_past(self, seconds: float = 0.0) -> bool:
        deadline = self._drain_deadline
        return deadline is not None and time.monotonic() + seconds >= deadline

    def _send_loop(self, lane: Lane) -> None:
        while not self._stopped.is_set() and not self._draining_past():
            if self._lanes.get(lane.receiver) is not lane:
                return  # housekeeping dropped the lane; a new one has its own thread
            lane.wakeup.clear()  # before looking, so a wake() while we look is not lost
            if lane.notifier is None or not self._allowed():
                if self._drain_deadline is not None:
                    return  # nothing of this lane can go out before the deadline
                lane.wakeup.wait(_IDLE_WAIT)
                continue
            with self._lock:
                now = self._clock()
                item, wait = lane.pick(now)
                notifier = lane.notifier
            if item is None or notifier is None:
                if self._drain_deadline is not None and (lane.size == 0
                                                         or self._draining_past(wait)):
                    return
                lane.wakeup.wait(min(wait, _IDLE_WAIT))
                continue
            try:
                went_on = self._attempt(lane, item, notifier, now)
            except Exception:
                if self._closed:
                    log.warning("outbox %s: the outcome of the attempt at notification %s "
                                "was not recorded after the outbox closed; it stays pending",
                                self._done.where, item.notification.id, exc_info=True)
                    return
                # Typically the state database (disk full, I/O error, a lost server): its
                # transactions are atomic, so the row still says pending and a later attempt
                # resends it.
                log.exception("outbox %s: the attempt at notification %s was not recorded; "
                              "it stays pending and goes out again", self._done.where,
                              item.notification.id)
                with self._lock:
                    lane.retry_later(item, self._clock() + self._backoff(item.attempts + 1))
                continue
            if not went_on:
                # Like may_send() false: this replica may not send now (or the state
                # database is unreachable); look again later.
                if self._drain_deadline is not None:
                    return
                lane.wakeup.wait(_IDLE_WAIT)

    def _allowed(self) -> bool:
        try:
            return bool(self._may_send())
        except Exception:
            log.exception("outbox: may_send() raised; not sending until it answers")
            return False

    def _attempt(self, lane: Lane, item: PendingItem, notifier: Notifier, now: float) -> bool:
        """Claim the item, then send it or give it up, and record the outcome; False when
        the claim could not be made (the item is due again, the lane should pause)."""
        with self._lock:
            if self._closed:
                lane.retry_later(item, item.next_at)
                return False
            self._attempting += 1
        try:
            claim = self._claim(lane, item, now)
            if claim is None:
                return False
            if claim.status == "claimed":
                self._send(lane, item, notifier, now, claim)
            return True
        finally:
            with self._lock:
                self._attempting -= 1
                close = self._closed and self._attempting == 0
            if close:
                self._done.close()

    def _claim(self, lane: Lane, item: PendingItem, now: float) -> Claim | None:
        """Claim the picked item; None (the item put back, due) when this replica may not.
        An item finished elsewhere leaves the lane; one another process is sending waits."""
        n = item.notification
        try:
            claim = self._store.claim(item.stored(), now, self._grace,
                                      mine=self._claims.get(item.seq))
        except STATE_ERRORS as exc:
            with self._lock:
                lane.retry_later(item, item.next_at)
            if isinstance(exc, NotLeader):
                log.info("outbox: not sending notification %s to %s: %s", n.id, n.receiver,
                         exc)
            else:
                log.warning("outbox %s: cannot claim notification %s for an attempt (%s); "
                            "not sending it until the claim succeeds", self._store.where,
                            n.id, exc)
            return None
        if claim.status == "gone":
            self._claims.pop(item.seq, None)
            with self._lock:
                lane.remove(item)
            log.info("notification %s (%s, incident %s) to receiver %s was finished by "
                     "another replica; not sending it", n.id, n.action.value, n.incident,
                     n.receiver)
        elif claim.status == "busy":
            since = claim.sending_since if claim.sending_since is not None else now
            # Looked at again soon, not only when the grace ends: a claimant found alive may
            # be gone a moment later (its last session dropped), and then it is ours at once.
            until = max(min(since + self._grace, now + BUSY_RECHECK_SECONDS), now)
            with self._lock:
                lane.retry_later(item, until)  # in memory only: the row is not ours
            log.info("notification %s (%s, incident %s) to receiver %s is being sent by "
                     "another replica since %.3f; looking again in %.1f s", n.id,
                     n.action.value, n.incident, n.receiver, since, until - now)
        else:
            self._claims[item.seq] = now
        return claim

    def _send(self, lane: Lane, item: PendingItem, notifier: Notifier, now: float,
              claim: Claim) -> None:
        n = item.notification
        if now - n.created_at > self._max_age:
            self._give_up(lane, item, self._expiry(item, now), now)
            return
        try:
            delivery = notifier.send(n, claim.receipt)
            if not isinstance(delivery, Delivery):
                raise TypeError(f"send() returned {type(delivery).__name__}, not a Delivery")
        except Exception as exc:
            # A bug of ours, not the channel's answer: retried in case it passes, but its
            # traceback is logged once per item, not at every attempt for a day (the retry's
            # own warning line still names the exception each time).
            if item.attempts == 0:
                log.exception("notifier of receiver %s raised on notification %s (%s); it "
                              "will be retried", n.receiver, n.id, n.action.value)
            delivery = Delivery(Outcome.RETRY, f"notifier raised {type(exc).__name__}")
        done = self._clock()
        with self._lock:
            # Counted from the end of the request: the spacing the channel sees is then at
            # least the throttle, however long our side took to start the next one.
            lane.ready_at = max(lane.ready_at, done + lane.throttle)
        # Recorded even when stop() gave up waiting for this send, or when this replica lost
        # leadership meanwhile: the next leader must not send an accepted item again.
        if delivery.outcome is Outcome.ACCEPTED:
            self._done.finish(item.stored(), done, receipt=delivery.receipt)
            self._claims.pop(item.seq, None)
            with self._lock:
                lane.remove(item)
                self._metrics.accepted(n.receiver, done - n.created_at)
            log.info("notification %s (%s, incident %s) delivered to %s", n.id,
                     n.action.value, n.incident, n.receiver)
        elif delivery.outcome is Outcome.RETRY:
            self._retry(lane, item, delivery, done)
        else:
            self._give_up(lane, item, delivery, done)

    def _retry(self, lane: Lane, item: PendingItem, delivery: Delivery, now: float) -> None:
        n = item.notification
        attempts = item.attempts + 1
        if delivery.retry_after is not None:
            delay = max(0.0, delivery.retry_after)
        else:
            delay = self._backoff(attempts)
        self._done.reschedule(item.seq, attempts, now + delay, delivery.detail,
                              claim=self._claims.get(item.seq))
        self._claims.pop(item.seq, None)
        with self._lock:
            item.attempts = attempts
            item.last_error = delivery.detail
            lane.retry_later(item, now + delay)
            if delivery.retry_after is not None:
                # A Retry-After speaks for the channel, not only for this message.
                lane.ready_at = max(lane.ready_at, now + delay)
            self._metrics.count(n.receiver, "retried")
        log.warning("receiver %s did not take notification %s (%s, attempt %d): %s; next "
                    "attempt in %.1f s", n.receiver, n.id, n.action.value, attempts,
                    delivery.detail or "no detail", delay)

    def _backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempts-1))]."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(attempts - 1, 60))
        return self._rng.uniform(0.0, ceiling)

    def _expiry(self, item: PendingItem, now: float) -> Delivery:
        hours = (now - item.notification.created_at) / 3600
        return Delivery(Outcome.PERMANENT,
                        f"still undelivered {hours:.1f} h after its creation, "
                        f"{item.attempts} attempts made (last error: "
                        f"{item.last_error or 'none'})")

    def _give_up(self, lane: Lane, item: PendingItem, delivery: Delivery, now: float) -> None:
        """Record that the claimed item is given up, and report it."""
        n = item.notification
        self._done.finish(item.stored(), now)
        self._claims.pop(item.seq, None)
        with self._lock:
            lane.remove(item)
            self._metrics.count(n.receiver, "failed")
        self._report_failure(n, delivery)

    def _report_failure(self, n: Notification, delivery: Delivery) -> None:
        log.error("notification %s (%s, incident %s) to receiver %s failed permanently: %s",
                  n.id, n.action.value, n.incident, n.receiver, delivery.detail or "no detail")
        if self._failures is not None and not self._closed:
            self._failures.failed(n, delivery)
