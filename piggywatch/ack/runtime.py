"""The acknowledgement hooks as the daemon runs them: the service, plus a Socket Mode
connection per Slack receiver with ``app_token`` and a poller per PagerDuty receiver with
``api_key``; built only when the configuration asks for one of them."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from piggywatch.ack.links import AckLinks
from piggywatch.ack.pagerduty_poll import PagerDutyPoller
from piggywatch.ack.service import AckService
from piggywatch.ack.socket_mode import SlackSocketMode
from piggywatch.alerting.channels.pagerduty import PagerDutyReceiver
from piggywatch.alerting.channels.slack import SlackReceiver
from piggywatch.state import StateLike
from piggywatch.store.samples import Sample

if TYPE_CHECKING:
    from piggywatch.alerting.incidents import Incidents
    from piggywatch.config import Settings

__all__ = ["AckHooks", "ack_links", "wants_hooks"]

log = logging.getLogger(__name__)


def ack_links(settings: Settings) -> AckLinks | None:
    """The link signer ``ack_links`` configures (None: mails carry no links)."""
    if settings.ack_links is None:
        return None
    return AckLinks(settings.ack_links.secret.get_secret_value(), settings.ack_links.ttl,
                    settings.external_url)


def wants_hooks(settings: Settings) -> bool:
    """Whether any receiver or ``ack_links`` takes acknowledgements from outside."""
    return settings.ack_links is not None or any(
        r.channel.takes_acks(r.channel_config) for r in settings.receivers)


class AckHooks:
    """Started and stopped with alert delivery, on the leader only."""

    def __init__(self, settings: Settings, incidents: Incidents, state: StateLike) -> None:
        self.service = AckService(incidents, state, settings.receivers,
                                  links=ack_links(settings))
        slack = [(r.name, c) for r in settings.receivers if (c := r.config_of(SlackReceiver))]
        pagerduty = [(r.name, p) for r in settings.receivers
                     if (p := r.config_of(PagerDutyReceiver))]
        self.sockets = [SlackSocketMode(name, config, self.service)
                        for name, config in slack if config.app_token is not None]
        self.pollers = [PagerDutyPoller(name, config, self.service, incidents)
                        for name, config in pagerduty if config.api_key is not None]

    def start(self) -> None:
        """Start the worker, the Socket Mode connections and the pollers."""
        self.service.start()
        for socket in self.sockets:
            try:
                socket.start()
            except Exception:
                log.exception("Slack Socket Mode could not start")
        for poller in self.pollers:
            poller.start()

    def stop(self) -> None:
        """Stop everything started."""
        for poller in self.pollers:
            poller.stop()
        for socket in self.sockets:
            socket.stop()
        self.service.stop()

    def samples(self) -> list[Sample]:
        """The hooks' metrics."""
        return self.service.samples(time.time())
