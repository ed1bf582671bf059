"""Alert delivery as the daemon runs it: the inbox, the dispatcher, the incident desk and
the outbox, built from the configuration, started and stopped together, their metrics
published into the store.

Data flows one way: the rules put alert events in the inbox, the outbox records what it
gave up in the same inbox, and the dispatcher drains it on its own pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from piggywatch import ack
from piggywatch.ack.runtime import AckHooks, ack_links, wants_hooks
from piggywatch.alerting import incidents as incident_desk
from piggywatch.alerting import outbox as outboxes
from piggywatch.alerting.channels import build_notifier, channel_throttles
from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.inbox import Inbox
from piggywatch.alerting.model import Notifier
from piggywatch.alerting.notifiers._common import http_client
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.config import Settings
from piggywatch.rules.alerts import AlertEvent, AlertState, EventKind
from piggywatch.rules.manager import RuleManager
from piggywatch.state import StateLike
from piggywatch.store import MemoryStore


class AlertDelivery:
    """The outbox (with one notifier per receiver), the dispatcher that feeds it, and the
    incident desk serving status and acknowledgement.

    ``inbox``: the rules' sink, kept across leaderships by the daemon (a new one by
    default); what a deposed leader's dispatcher did not take is dropped at ``stop``.
    """

    def __init__(self, settings: Settings, state: StateLike, *,
                 may_send: Callable[[], bool] = lambda: True,
                 completion_state: StateLike | None = None,
                 in_flight_grace: float = 0.0, inbox: Inbox | None = None) -> None:
        self.inbox = inbox if inbox is not None else Inbox()
        self._http_channels = any(r.channel.uses_http(r.channel_config)
                                  for r in settings.receivers)
        links = ack_links(settings)
        notifiers: dict[str, Notifier] = {
            r.name: build_notifier(r, external_url=settings.external_url, ack_links=links)
            for r in settings.receivers}
        self.outbox = Outbox(state, notifiers,
                             throttles=channel_throttles(settings.receivers),
                             failures=self.inbox, may_send=may_send,
                             completion_state=completion_state,
                             in_flight_grace=in_flight_grace)
        self.dispatcher = Dispatcher(
            AlertingSettings.of(settings),
            self.outbox, state, external_url=settings.external_url, inbox=self.inbox)
        self.incidents = self.dispatcher.incidents
        # PagerDuty webhooks or polling, Slack buttons, mail links: None when none is set.
        self.hooks = AckHooks(settings, self.incidents, state) if wants_hooks(settings) \
            else None

    def start(self, firing: Iterable[AlertEvent] | None) -> None:
        """Start sending what the outbox holds, then dispatching (see Dispatcher.start)."""
        if self._http_channels:
            # Making the shared HTTP client loads the CA bundle (~0.3 s): done now, in the
            # background, so the first page does not wait for it.
            threading.Thread(target=http_client, name="http-client-warmup",
                             daemon=True).start()
        self.outbox.start()
        self.dispatcher.start(firing)
        if self.hooks is not None:
            self.hooks.start()

    def publish(self, store: MemoryStore) -> None:
        """Write the delivery metrics to the store."""
        now = time.time()
        store.publish(incident_desk.STORE_KEY, self.incidents.samples(now), now)
        store.publish(outboxes.STORE_KEY, self.outbox.samples(now), now)
        if self.hooks is not None:
            store.publish(ack.STORE_KEY, self.hooks.samples(), now)

    def stop(self, grace: float) -> None:
        """Stop dispatching, deliver for up to ``grace`` seconds, close the state."""
        if self.hooks is not None:
            self.hooks.stop()
        self.dispatcher.close()
        self.inbox.clear()
        self.outbox.stop(grace)
        self.outbox.close()


def register_delivery_metrics(store: MemoryStore) -> None:
    """Declare the delivery metrics."""
    store.register(incident_desk.SPECS)
    store.register(outboxes.SPECS)
    store.register(ack.SPECS)


def clear_delivery_metrics(store: MemoryStore) -> None:
    """Withdraw the delivery metrics (a standby delivers nothing; the leader exports them)."""
    now = time.time()
    store.publish(incident_desk.STORE_KEY, [], now)
    store.publish(outboxes.STORE_KEY, [], now)
    store.publish(ack.STORE_KEY, [], now)


def firing_events(rules: RuleManager | None) -> list[AlertEvent] | None:
    """The alerts the rules hold as firing (restored after a restart), as events; None when
    no rules are loaded, as they then know nothing and must not resolve anything."""
    if rules is None or not rules.groups():
        return None
    now = time.time()
    return [AlertEvent(EventKind.FIRING, group, rule, alert, now)
            for group, rule, alert in rules.active_alerts()
            if alert.state is AlertState.FIRING]
