"""The Alertmanager receiver against a real Alertmanager (Debian's prometheus-alertmanager):
alerts forwarded by a running daemon show up in its /api/v2/alerts, and leave it when they
resolve."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from piggywatch.alerting.channels.alertmanager import AlertmanagerReceiver
from piggywatch.alerting.model import Action, AlertInfo, AlertStatus, Notification, Outcome
from piggywatch.alerting.notifiers.alertmanager import AlertmanagerNotifier
from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_for

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(BINARY is None, reason="Alertmanager is not installed")

ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
  group_wait: 0s
receivers:
  - name: "null"
"""

APPLICATION = "am-interop"
RULES = f"""\
groups:
  - name: interop
    rules:
      - alert: InteropClientConnected
        expr: pg_connections_by_application{{application_name="{APPLICATION}"}} > 0
        for: 0s
        labels: {{severity: low}}
        annotations:
          summary: "{{{{ $labels.target }}}}: {APPLICATION} is connected"
          runbook: https://runbooks.example.com/interop
"""


class Alertmanager:
    """`prometheus-alertmanager` on a free loopback port, its storage in a temp dir and its
    cluster listener off (no gossip)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        (workdir / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
        (workdir / "data").mkdir()
        self.log_path = workdir / "alertmanager.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Alertmanager:
        assert BINARY is not None
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={self.workdir / 'alertmanager.yml'}",
             f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 20, "Alertmanager's /-/ready", details=self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
        self._log.close()

    def _ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"Alertmanager exited\n{self.log()}"
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The active alerts whose labels include ``labels``."""
        response = httpx.get(self.url + "/api/v2/alerts", timeout=5)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return [a for a in found if labels.items() <= a["labels"].items()]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    workdir = tmp_path / "alertmanager"
    workdir.mkdir()
    with Alertmanager(workdir) as am:
        yield am


def daemon_config(tmp_path: Path, cluster: ThrowawayCluster, alertmanager_url: str) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    dsn = cluster.dsn(dbname="piggybong", user="piggywatch",
                      password=cluster.role_password("piggywatch"))
    config = tmp_path / "piggywatch.yaml"
    config.write_text(f"""\
server:
  api_token: interop-token-0123456789
{fast_rules_config(dsn)}external_url: http://piggywatch.test
receivers:
  - name: upstream-alertmanager
    alertmanager: {{url: "{alertmanager_url}", timeout: 5s}}
route:
  receiver: upstream-alertmanager
  group_by: [alertname, target]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
logging: {{level: INFO, format: json}}
""")
    return config


def test_daemon_alerts_arrive_in_alertmanager_and_resolve_there(
        tmp_path: Path, pg_cluster: ThrowawayCluster, alertmanager: Alertmanager) -> None:
    config = daemon_config(tmp_path, pg_cluster, alertmanager.url)
    client = psycopg.connect(pg_cluster.dsn(dbname="piggybong"), application_name=APPLICATION)
    try:
        with DaemonProcess(config, tmp_path) as daemon:
            def arrived() -> bool:
                return bool(alertmanager.alerts(alertname="InteropClientConnected"))

            wait_for(arrived, 30, "the alert in Alertmanager",
                     details=lambda: daemon.stderr() + alertmanager.log())
            [alert] = alertmanager.alerts(alertname="InteropClientConnected")
            assert alert["labels"]["severity"] == "low"
            assert alert["labels"]["target"] == "main"
            assert alert["labels"]["application_name"] == APPLICATION
            assert alert["annotations"] == {
                "summary": f"main: {APPLICATION} is connected",
                "runbook": "https://runbooks.example.com/interop"}
            assert alert["status"]["state"] == "active"
            # Posted without endsAt: Alertmanager gives it one resolve_timeout ahead.
            assert alert["endsAt"] > alert["startsAt"]

            client.close()

            def resolved() -> bool:
                return not alertmanager.alerts(alertname="InteropClientConnected")

            wait_for(resolved, 30, "the alert to resolve in Alertmanager",
                     details=lambda: daemon.stderr() + alertmanager.log())
    finally:
        client.close()


def notification(alert: AlertInfo, at: float, action: Action = Action.TRIGGER) -> Notification:
    return Notification(id=f"n-{at}", receiver="upstream-alertmanager", action=action,
                        incident="interop", group_labels={"alertname": alert.name},
                        alerts=(alert,), created_at=at)


def test_resolved_alert_is_posted_with_its_end_and_leaves_the_active_list(
        alertmanager: Alertmanager) -> None:
    notifier = AlertmanagerNotifier(AlertmanagerReceiver(url=alertmanager.url + "/"))
    started = time.time() - 60
    firing = AlertInfo(fingerprint="f1", status=AlertStatus.FIRING,
                       labels={"alertname": "DiskAlmostFull", "severity": "high",
                               "target": "main", "empty": ""},
                       annotations={"summary": "disk at 91%"}, starts_at=started,
                       generator_url="http://piggywatch.test/alerts")

    delivery = notifier.send(notification(firing, time.time()), {})

    assert delivery.outcome is Outcome.ACCEPTED, delivery
    [shown] = alertmanager.alerts(alertname="DiskAlmostFull")
    assert shown["labels"] == {"alertname": "DiskAlmostFull", "severity": "high",
                               "target": "main"}
    assert shown["annotations"] == {"summary": "disk at 91%"}
    assert shown["generatorURL"] == "http://piggywatch.test/alerts"

    ended = time.time() - 1
    resolved = AlertInfo(fingerprint="f1", status=AlertStatus.RESOLVED, labels=firing.labels,
                         annotations=firing.annotations, starts_at=started, ends_at=ended)
    delivery = notifier.send(notification(resolved, time.time(), Action.RESOLVE), {})

    assert delivery.outcome is Outcome.ACCEPTED, delivery
    assert alertmanager.alerts(alertname="DiskAlmostFull") == []
