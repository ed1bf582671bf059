"""Webhook URLs are secrets (a Slack incoming webhook's path is its credential): whatever a
failing endpoint answers, no fragment of the path or query reaches the daemon's log, the
outbox's stored error, the API, or the PiggyWatchNotificationFailing another receiver gets."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import urlencode

from piggywatch.observability import Redactor, redact_url
from tests.support.daemon_process import DaemonProcess
from tests.support.ports import free_port
from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply
from tests.support.servers.slack import SlackServer

PATH_SECRET = "Xs3cr3tP4thT0ken"
QUERY_SECRET = "Qs3cr3tQu3ryT0ken"
SECRET_PATH = f"/hooks/T0PIGGY42/B0PIGGY42/{PATH_SECRET}"
QUERY = f"token={QUERY_SECRET}"
FRAGMENTS = (PATH_SECRET, QUERY_SECRET, "T0PIGGY42", "B0PIGGY42", "T0PIGGY42/B0PIGGY42")
RULES = """\
groups:
  - name: always
    rules:
      - alert: AlwaysFiring
        expr: absent(nothing_is_called_this)
        labels: {severity: high}
"""


class TellingServer(LocalHTTPServer):
    """An endpoint that fails and says where the request went, as many web frameworks and
    proxies do: ``Cannot POST /path?query``, or a redirect to the https:// form."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def handle(self, request: RecordedRequest) -> Reply:
        query = urlencode({k: v[-1] for k, v in request.query.items()})
        if self.status == 301:
            moved = f"https://127.0.0.1:{self.port}{request.path}/?{query}"
            return Reply(301, f"Moved Permanently. Redirecting to {moved}",
                         {"Location": moved})
        return Reply(self.status, f"Cannot POST {request.path}?{query}")


def config(servers: dict[str, TellingServer], slack: SlackServer, closed_port: int) -> str:
    hooks = "".join(f"""\
  - name: {name}
    webhook: {{url: "{server.base_url}{SECRET_PATH}?{QUERY}"}}
""" for name, server in servers.items())
    return f"""\
targets:
  - name: main
    dsn: postgresql://nobody@127.0.0.1:1/none
    collectors:
      connections: {{enabled: false}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: sqlite:///./state.db
logging: {{level: DEBUG, format: json}}
receivers:
{hooks}  - name: slack-hook-down
    slack: {{webhook_url: "http://127.0.0.1:{closed_port}{SECRET_PATH}?{QUERY}"}}
  - name: oncall-slack
    slack: {{token: {slack.token}, channel: "#oncall", base_url: "{slack.url}"}}
route: {{escalation: everyone, group_wait: 0s}}
escalations:
  everyone: [{{notify: [{", ".join(servers)}, slack-hook-down, oncall-slack]}}]
"""


def test_no_fragment_of_a_secret_webhook_url_is_shown_anywhere(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    servers = {"hook-404": TellingServer(404), "hook-redirect": TellingServer(301),
               "hook-500": TellingServer(500)}
    for server in servers.values():
        server.start()
    path = tmp_path / "piggywatch.yaml"
    try:
        with SlackServer() as slack:
            path.write_text(config(servers, slack, free_port()))
            with DaemonProcess(path, tmp_path) as daemon:
                # The 404 and the redirect are refusals for good: each raises
                # PiggyWatchNotificationFailing on the Slack bot, which works.
                daemon.wait_until(lambda: sum("PiggyWatchNotificationFailing" in m.text
                                              for m in slack.messages) == 2, 20,
                                  "two PiggyWatchNotificationFailing on Slack")
                # The 500 and the closed port are retried, their errors stored.
                db = sqlite3.connect(f"file:{tmp_path / 'state.db'}?mode=ro", uri=True)
                try:
                    daemon.wait_until(lambda: {r for r, in db.execute(
                        "SELECT receiver FROM outbox_items WHERE last_error != ''"
                    )} == {"hook-500", "slack-hook-down"}, 20, "both receivers' stored errors")
                    stored = db.execute("SELECT receiver, last_error FROM outbox_items "
                                        "WHERE last_error != ''").fetchall()
                finally:
                    db.close()
                alerts = daemon.api("GET", "/api/v1/alerts").text + daemon.get("/metrics").text
                daemon.terminate()
            log = daemon.stderr()
            shown = json.dumps([(m.text, m.all_blocks) for m in slack.messages])
    finally:
        for server in servers.values():
            server.stop()
    assert all(len(s.requests) >= 1 for s in servers.values()), "each endpoint was tried"
    errors = dict(stored)
    assert set(errors) == {"hook-500", "slack-hook-down"}
    assert "webhook answered 500" in errors["hook-500"], errors
    assert "ConnectError" in errors["slack-hook-down"], errors
    assert "webhook answered 404" in shown and "webhook answered 301" in shown
    assert '"alertname": "AlwaysFiring"' in alerts
    for where, text in (("log", log), ("stored errors", repr(stored)), ("API and metrics", alerts),
                        ("Slack", shown)):
        for fragment in FRAGMENTS:
            assert fragment not in text, f"{fragment!r} in the {where}"


def test_a_secret_url_is_redacted_by_its_structure_not_by_its_whole_text() -> None:
    secret = ("https://hooks.slack.com/services/T0PIGGY42/B0PIGGY42/"
              "abcdefghijklmnopqrstuvwx%2Fz?token=Qs3cr3tQu3ryT0ken")
    redactor = Redactor([secret])

    for echoed, shown in [
        # Another scheme, upper case, a trailing slash: still that host, cut after it.
        ("Redirecting to HTTP://HOOKS.SLACK.COM/services/T0PIGGY42/B0PIGGY42/x/?a=b",
         "Redirecting to HTTP://HOOKS.SLACK.COM/…"),
        # The path or its parts alone, raw or percent-decoded.
        ("Cannot POST /services/T0PIGGY42/B0PIGGY42/abcdefghijklmnopqrstuvwx/z",
         "Cannot POST ***"),
        ("invalid_token: abcdefghijklmnopqrstuvwx", "invalid_token: ***"),
        ("team T0PIGGY42 has no token Qs3cr3tQu3ryT0ken", "team *** has no token ***"),
        # Words of the path, and other hosts, stay readable.
        ("no_service for services at https://slack.com/api/chat.postMessage",
         "no_service for services at https://slack.com/api/chat.postMessage"),
    ]:
        assert redactor.scrub(echoed) == shown
    assert redact_url(secret) == "https://hooks.slack.com/…"
    assert redact_url("http://user:pw@127.0.0.1:9/x?y=1") == "http://127.0.0.1:9/…"
