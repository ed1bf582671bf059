"""The durable outbox: the only way a notification leaves.

A notification is committed to the state database before any attempt to send it and deleted
only once its channel accepted it or refused it for good, so a crash at any moment leaves it
pending and the next start sends it (again: dedup keys make a resend harmless).

Each receiver has a lane: its pending items, its throttle and its own sender thread, so an
SMTP server hanging for its whole timeout never delays a page. Within a lane, the items of
one incident go strictly in the order they were enqueued (an acknowledge or a resolve never
overtakes its trigger, even while the trigger is being retried); the items of different
incidents go oldest first, and one that is being retried holds up no other incident.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from piggywatch.alerting.model import Delivery, Notification, Notifier, Outcome
from piggywatch.alerting.outbox_lane import Lane, PendingItem
from piggywatch.alerting.outbox_metrics import SOURCE, SPECS, OutboxMetrics
from piggywatch.alerting.outbox_store import OutboxStore
from piggywatch.alerting.settings import Receiver
from piggywatch.state import StateLike
from piggywatch.store.samples import Sample

__all__ = ["DEFAULT_THROTTLES", "SOURCE", "SPECS", "Outbox", "default_throttles"]

log = logging.getLogger(__name__)

MAX_AGE = 24 * 3600.0
# Seconds between two requests to one receiver, by channel: Slack allows about one message
# per second per channel, PagerDuty 120 events a minute per integration.
DEFAULT_THROTTLES = {"slack": 1.0, "pagerduty": 0.5}

# A lane looks again at least this often even when nobody wakes it: the wall clock may have
# jumped, or may_send() may have turned true again (leadership regained).
_IDLE_WAIT = 1.0
_HOUSEKEEPING_EVERY = 60.0
_UNKNOWN_LOG_EVERY = 3600.0


def default_throttles(receivers: Iterable[Receiver]) -> dict[str, float]:
    """The throttle of each configured receiver whose channel has a rate limit."""
    found: dict[str, float] = {}
    for receiver in receivers:
        kind = "slack" if receiver.slack else "pagerduty" if receiver.pagerduty else None
        if kind is not None:
            found[receiver.name] = DEFAULT_THROTTLES[kind]
    return found


class Outbox:
    """Pending notifications in the state database, delivered by one sender thread per
    receiver.

    ``state`` is the state database (a store, or the path of a SQLite file). ``throttles``
    holds, per receiver, the minimum seconds from the end of one request to the start of
    the next (see ``default_throttles``). ``may_send`` is asked before every attempt, so a
    replica that lost leadership stops at once. ``on_permanent_failure`` hears
    of every notification given up: refused for good, or still undelivered ``max_age``
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
        on_permanent_failure: Callable[[Notification, Delivery], None] | None = None,
        may_send: Callable[[], bool] = lambda: True,
        throttles: Mapping[str, float] | None = None,
        max_age: float = MAX_AGE,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        receipt_retention: float = 7 * 86400.0,
        rng: random.Random | None = None,
    ) -> None:
        self._store = OutboxStore(state)
        self._clock = clock
        self._on_permanent_failure = on_permanent_failure
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
        time, then stop. What is left stays in the state database for the next start."""
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
                        "notifications stay pending", ", ".join(stuck))

    def close(self) -> None:
        """Stop at once (if running) and close the connection to the state database."""
        if self._started and not self._stopped.is_set():
            self.stop(0.0)
        self._closed = True
        self._store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- metrics

    def samples(self, now: float) -> list[Sample]:
        """The outbox's metrics (see ``SPECS``), for ``MemoryStore.publish(SOURCE, …)``."""
        with self._lock:
            return self._metrics.samples(now, self._lanes.values())

    # -- housekeeping

    def housekeep(self) -> None:
        """Give up items older than ``max_age``, forget old finished ids and unused receipts,
        and log receivers that have items but no configuration. Runs every minute."""
        now = self._clock()
        expired: list[tuple[Lane, PendingItem]] = []
        with self._lock:
            for lane in self._lanes.values():
                # Taken out of the lane at once, so its sender cannot pick them meanwhile.
                expired.extend((lane, item) for item in lane.take_expired(now - self._max_age))
        for lane, item in expired:
            self._give_up(lane, item, self._expiry(item, now), now, removed=True)
        self._store.prune(done_before=now - self._max_age,
                          receipts_before=now - self._receipt_retention)
        with self._lock:
            for name in [n for n, lane in self._lanes.items()
                         if lane.size == 0 and lane.notifier is None]:
                del self._lanes[name]
        self._log_unknown_receivers(now, every=_UNKNOWN_LOG_EVERY)

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
                self._attempt(lane, item, notifier, now)
            except Exception:
                if self._closed:
                    return
                # Typically the state database (disk full, I/O error, a lost server): its
                # transactions are atomic, so the row still says pending and a later attempt
                # resends it.
                log.exception("outbox %s: the attempt at notification %s was not recorded; "
                              "it stays pending and goes out again", self._store.where,
                              item.notification.id)
                with self._lock:
                    lane.retry_later(item, self._clock() + self._backoff(item.attempts + 1))

    def _allowed(self) -> bool:
        try:
            return bool(self._may_send())
        except Exception:
            log.exception("outbox: may_send() raised; not sending until it answers")
            return False

    def _attempt(self, lane: Lane, item: PendingItem, notifier: Notifier, now: float) -> None:
        n = item.notification
        if now - n.created_at > self._max_age:
            self._give_up(lane, item, self._expiry(item, now), now)
            return
        receipt = self._store.receipt(n.receiver, n.incident)
        try:
            delivery = notifier.send(n, receipt)
            if not isinstance(delivery, Delivery):
                raise TypeError(f"send() returned {type(delivery).__name__}, not a Delivery")
        except Exception as exc:
            log.exception("notifier of receiver %s raised on notification %s (%s); it will "
                          "be retried", n.receiver, n.id, n.action.value)
            delivery = Delivery(Outcome.RETRY, f"notifier raised {type(exc).__name__}")
        done = self._clock()
        with self._lock:
            # Counted from the end of the request: the spacing the channel sees is then at
            # least the throttle, however long our side took to start the next one.
            lane.ready_at = max(lane.ready_at, done + lane.throttle)
        if self._closed:
            return  # stop() gave up waiting for this send: the item stays pending
        if delivery.outcome is Outcome.ACCEPTED:
            self._store.finish(item.stored(), done, receipt=delivery.receipt)
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
        self._store.reschedule(item.seq, attempts, now + delay, delivery.detail)
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

    def _give_up(self, lane: Lane, item: PendingItem, delivery: Delivery, now: float, *,
                 removed: bool = False) -> None:
        n = item.notification
        self._store.finish(item.stored(), now)
        with self._lock:
            if not removed:
                lane.remove(item)
            self._metrics.count(n.receiver, "failed")
        log.error("notification %s (%s, incident %s) to receiver %s failed permanently: %s",
                  n.id, n.action.value, n.incident, n.receiver, delivery.detail or "no detail")
        if self._on_permanent_failure is not None:
            try:
                self._on_permanent_failure(n, delivery)
            except Exception:
                log.exception("on_permanent_failure raised for notification %s", n.id)
