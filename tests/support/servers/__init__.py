"""Real local servers that speak the channels' wire formats, for notifier and end-to-end
tests: each starts on a free loopback port, records what it received and can be scripted
to fail.

    with PagerDutyServer() as pd:
        pd.script(Reply(500), Reply(500))      # the next two requests fail
        ...                                    # send to pd.url
        assert pd.events[0]["event_action"] == "trigger"

- ``PagerDutyServer``: Events API v2 at ``.url``, strict schema, ``.events``, ``.alert_status()``.
- ``SlackServer``: Web API at ``.url`` (chat.postMessage / chat.update), incoming webhook
  at ``.webhook_url``; ``.messages``, ``.message()``, ``.replies()``, ``.webhook_messages``.
- ``SMTPServer``: aiosmtpd on ``.host``/``.port`` (``.smarthost``), optional STARTTLS or
  implicit TLS and AUTH; ``.mails``, ``.reply_next()``.
- ``WebhookServer``: records JSON posts at ``.url``; ``AlertmanagerServer``: ``/api/v2/alerts``.
"""

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply
from tests.support.servers.pagerduty import PagerDutyServer
from tests.support.servers.slack import SlackMessage, SlackServer
from tests.support.servers.webhook import AlertmanagerServer, WebhookServer

# SMTPServer needs aiosmtpd (a dev dependency): import it from tests.support.servers.smtp.
__all__ = [
    "AlertmanagerServer",
    "LocalHTTPServer",
    "PagerDutyServer",
    "RecordedRequest",
    "Reply",
    "SlackMessage",
    "SlackServer",
    "WebhookServer",
]
