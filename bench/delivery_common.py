"""What the delivery benchmarks share: the rules engine, the dispatcher and outbox as the
daemon wires them (AlertDelivery), and local PagerDuty / webhook servers that note when
each request arrived."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from piggywatch.config_file import parse_settings
from piggywatch.delivery import AlertDelivery, register_delivery_metrics
from piggywatch.rules.manager import NoData, RuleManager
from piggywatch.store import MemoryStore, MetricKind, MetricSpec
from tests.support.servers._http import RecordedRequest, Reply
from tests.support.servers.pagerduty import PagerDutyServer
from tests.support.servers.webhook import WebhookServer

ROUTING_KEY = "B3NCHK3Y0123456789abcdefABCDEF00"
RULE = """\
groups:
  - name: bench
    rules:
      - alert: BenchValueHigh
        expr: bench_value > 0
        labels: {severity: critical}
        annotations: {summary: "{{ $labels.target }} {{ $labels.instance }} is high"}
"""


class TimedPagerDuty(PagerDutyServer):
    """PagerDuty that notes the arrival time (perf_counter) of every request."""

    def __init__(self) -> None:
        super().__init__(routing_key=ROUTING_KEY)
        self.arrivals: list[tuple[float, dict[str, Any]]] = []

    def handle(self, request: RecordedRequest) -> Reply:
        arrived = time.perf_counter()
        reply = super().handle(request)
        if reply.status == 202:
            self.arrivals.append((arrived, request.json()))
        return reply


def settings_yaml(pagerduty: PagerDutyServer, webhook: WebhookServer | None,
                  group_wait: str) -> str:
    """A configuration with the bench's receivers and one route."""
    receivers = [f"  - {{name: pd, pagerduty: {{routing_key: {ROUTING_KEY}, "
                 f"url: '{pagerduty.url}'}}}}"]
    notify = ["pd"]
    if webhook is not None:
        receivers.append(f"  - {{name: hook, webhook: {{url: '{webhook.url}'}}}}")
        notify.append("hook")
    return "\n".join([
        "targets: [{name: bench, dsn: 'postgresql://bench@127.0.0.1:1/bench'}]",
        "receivers:", *receivers,
        "route:",
        "  escalation: page",
        "  group_by: [alertname, target]",
        f"  group_wait: {group_wait}",
        "  group_interval: 5m",
        "  repeat_interval: 4h",
        "escalations:",
        f"  page: [{{notify: [{', '.join(notify)}]}}]",
    ]) + "\n"


class Pipeline:
    """Rules → dispatcher → outbox → notifiers, in this process, on a temporary state."""

    def __init__(self, directory: Path, config: str) -> None:
        settings = parse_settings(config, "bench.yaml", {})
        self.store = MemoryStore()
        self.store.register([MetricSpec("bench_value", MetricKind.GAUGE, "bench")])
        self.delivery = AlertDelivery(settings, directory / "state.db")
        register_delivery_metrics(self.store)
        self.rules = RuleManager(self.store, self.store, self.delivery.dispatcher.handle,
                                 no_data=NoData.OK)
        rules = directory / "rules.yaml"
        rules.write_text(RULE)
        assert not self.rules.load([rules])
        self.delivery.start(firing=None)

    def close(self) -> None:
        self.delivery.stop(1.0)


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    """The value at quantile ``q`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
