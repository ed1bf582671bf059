"""The HTTP API and the commands that use it: bearer token, basic auth and TLS, alerts with
their delivery state, acks and silences, against a real server on a loopback port."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from piggywatch.alerting.dispatcher import Dispatcher
from piggywatch.alerting.model import Action
from piggywatch.alerting.outbox import Outbox
from piggywatch.alerting.settings import AlertingSettings
from piggywatch.api import DaemonApi
from piggywatch.cli import main
from piggywatch.exporter import build_registry
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.server import Access, Endpoints, HttpServer
from piggywatch.store import MemoryStore, MetricKind, MetricSpec, Sample, labels_of
from tests.support.notifiers import RecordingNotifier
from tests.support.servers.tls import cryptography_available, make_certificate

TOKEN = "api-token-for-tests-0123456789"
RULE = """\
groups:
  - name: api
    rules:
      - alert: QueueDeep
        expr: queue_depth > 100
        labels: {severity: high}
        annotations: {summary: "{{ $labels.target }} queue at {{ $value }}"}
"""
DELIVERY = """
receivers: [{name: oncall, webhook: {url: "http://127.0.0.1:9/hook"}}]
route: {receiver: oncall, group_by: [alertname, target], group_wait: 0s}
"""


@dataclass
class Running:
    url: str
    outbox: Outbox
    fingerprint: str


def serve(tmp_path: Path, access: Access, tls: tuple[str, str] | None = None
          ) -> Iterator[Running]:
    """Rules with one firing alert, notified through the dispatcher, behind the API."""
    store = MemoryStore()
    store.register([MetricSpec("queue_depth", MetricKind.GAUGE, "test")])
    outbox = Outbox(tmp_path / "state.db", {"oncall": RecordingNotifier()})
    settings = AlertingSettings.model_validate(yaml.safe_load(DELIVERY))
    dispatcher = Dispatcher(settings, outbox, tmp_path / "state.db")
    rules = RuleManager(store, store, dispatcher.handle, no_data=NoData.OK)
    (tmp_path / "rules.yaml").write_text(RULE)
    assert not rules.load([tmp_path / "rules.yaml"])
    now = time.time()
    store.publish("q", [Sample("queue_depth", labels_of(target="main"), 250, now - 1)], now)
    [event] = rules.evaluate_group("api", now)
    dispatcher.run_pass(now)
    endpoints = Endpoints(build_registry(store, process_metrics=False),
                          ready=lambda: (True, "ready"), statements=dict,
                          alerting=DaemonApi(rules, dispatcher.incidents), access=access)
    server = HttpServer(endpoints, "127.0.0.1", 0, tls=tls)
    server.start()
    scheme = "https" if tls else "http"
    try:
        yield Running(f"{scheme}://127.0.0.1:{server.port}", outbox, event.alert.fingerprint)
    finally:
        server.stop()
        dispatcher.close()
        outbox.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Running]:
    yield from serve(tmp_path, Access(api_token=TOKEN, metrics_username="prometheus",
                                      metrics_password="scrape-secret"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(TOKEN[:-1]),
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
def test_every_api_call_without_the_token_is_401(api: Running,
                                                 headers: dict[str, str]) -> None:
    for method, path in [("GET", "/api/v1/alerts"), ("GET", "/api/v1/silences"),
                         ("POST", f"/api/v1/alerts/{api.fingerprint}/ack"),
                         ("DELETE", "/api/v1/silences/x"), ("GET", "/api/v1/statements")]:
        response = httpx.request(method, api.url + path, headers=headers, json={"by": "x"})
        assert response.status_code == 401, (method, path)
        assert TOKEN not in response.text
    assert httpx.get(api.url + "/api/v1/alerts", headers=bearer(TOKEN)).status_code == 200


def test_an_empty_configured_token_refuses_everything(tmp_path: Path) -> None:
    for running in serve(tmp_path, Access(api_token="")):
        for headers in ({}, {"Authorization": "Bearer"}, bearer(TOKEN)):
            assert httpx.get(running.url + "/api/v1/alerts",
                             headers=headers).status_code == 401
        assert httpx.get(running.url + "/metrics").status_code == 200


def test_metrics_behind_basic_auth(api: Running) -> None:
    refused = httpx.get(api.url + "/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(api.url + "/metrics", auth=("prometheus", "nope")).status_code == 401
    assert httpx.get(api.url + "/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}).status_code == 401
    allowed = httpx.get(api.url + "/metrics", auth=("prometheus", "scrape-secret"))
    assert allowed.status_code == 200 and "queue_depth" in allowed.text
    assert httpx.get(api.url + "/healthz").status_code == 200


@pytest.mark.skipif(not cryptography_available(), reason="needs the cryptography package")
def test_tls_serves_every_endpoint(tmp_path: Path) -> None:
    cert = make_certificate(tmp_path / "tls")
    for running in serve(tmp_path, Access(api_token=TOKEN),
                         tls=(str(cert.cert_path), str(cert.key_path))):
        client = httpx.Client(verify=cert.client_context())
        assert client.get(running.url + "/metrics").status_code == 200
        assert client.get(running.url + "/api/v1/alerts",
                          headers=bearer(TOKEN)).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(running.url.replace("https", "http") + "/metrics", timeout=2)
        # A client that never starts its handshake holds up no one else.
        port = int(running.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)):
            began = time.monotonic()
            assert client.get(running.url + "/healthz").status_code == 200
            assert time.monotonic() - began < 2


def test_alerts_list_delivery_state_and_ack_notifies(api: Running) -> None:
    [alert] = httpx.get(api.url + "/api/v1/alerts", headers=bearer(TOKEN)).json()[
        "data"]["alerts"]
    assert alert["fingerprint"] == api.fingerprint
    assert (alert["state"], alert["level"], alert["ack"], alert["silenced_by"],
            alert["inhibited"]) == ("firing", 1, None, [], False)
    bad = httpx.post(f"{api.url}/api/v1/alerts/{api.fingerprint}/ack", headers=bearer(TOKEN),
                     json={"comment": "no name"})
    assert bad.status_code == 400 and "by" in bad.json()["error"]
    unknown = httpx.post(f"{api.url}/api/v1/alerts/0123456789abcdef/ack",
                         headers=bearer(TOKEN), json={"by": "alice"})
    assert unknown.status_code == 404
    ok = httpx.post(f"{api.url}/api/v1/alerts/{api.fingerprint}/ack", headers=bearer(TOKEN),
                    json={"by": "alice", "comment": "draining the queue"})
    assert ok.status_code == 200
    assert ok.json()["data"]["ack"]["by"] == "alice" and ok.json()["data"]["new"] is True
    assert [n.action for n in api.outbox.pending()] == [Action.TRIGGER, Action.ACKNOWLEDGE]
    [alert] = httpx.get(api.url + "/api/v1/alerts", headers=bearer(TOKEN)).json()[
        "data"]["alerts"]
    assert alert["ack"]["by"] == "alice" and alert["ack"]["comment"] == "draining the queue"


def test_cli_lists_acks_and_silences(api: Running) -> None:
    runner = CliRunner()
    env = {"PIGGYWATCH_API_TOKEN": TOKEN, "PIGGYWATCH_URL": api.url}
    listed = runner.invoke(main, ["alerts"], env=env)
    assert listed.exit_code == 0, listed.output
    header, row = listed.output.splitlines()
    assert header.split()[:5] == ["FINGERPRINT", "ALERT", "SEVERITY", "STATE", "LEVEL"]
    assert row.split()[:5] == [api.fingerprint, "QueueDeep", "high", "firing", "1"]
    acked = runner.invoke(main, ["ack", api.fingerprint, "--by", "bob"], env=env)
    assert acked.exit_code == 0 and "acknowledged by bob" in acked.output
    again = runner.invoke(main, ["ack", api.fingerprint, "--by", "carol"], env=env)
    assert "acknowledged by bob (already acknowledged)" in again.output
    added = runner.invoke(main, ["silence", "add", 'alertname="QueueDeep"', "target=main",
                                 "--duration", "2h", "--comment", "migration"], env=env)
    assert added.exit_code == 0, added.output
    silence_id = added.output.strip()
    listed = runner.invoke(main, ["silence", "list"], env=env)
    assert silence_id in listed.output and "migration" in listed.output
    row = runner.invoke(main, ["alerts"], env=env).output.splitlines()[1]
    assert "firing (silenced)" in row and "bob" in row
    expired = runner.invoke(main, ["silence", "expire", silence_id], env=env)
    assert expired.exit_code == 0
    assert silence_id not in runner.invoke(main, ["silence", "list"], env=env).output
    assert "expired" in runner.invoke(main, ["silence", "list", "--all"], env=env).output
    bad = runner.invoke(main, ["silence", "add", "nonsense", "--comment", "x"], env=env)
    assert bad.exit_code == 1 and "is not a matcher" in bad.output
    refused = runner.invoke(main, ["alerts", "--token", "wrong"], env=env)
    assert refused.exit_code == 1 and "refused the API token" in refused.output
    missing = runner.invoke(main, ["alerts"], env={"PIGGYWATCH_URL": api.url,
                                                   "PIGGYWATCH_API_TOKEN": ""})
    assert missing.exit_code == 1 and "PIGGYWATCH_API_TOKEN" in missing.output
