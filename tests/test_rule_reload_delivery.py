"""Reloading rules resolves the incidents of rules that no longer exist (no endless repeats)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from piggywatch.demo.cluster import ThrowawayCluster
from tests.support.daemon_process import DaemonProcess, fast_rules_config
from tests.support.servers.webhook import WebhookServer

RULES = """\
groups:
  - name: reload
    rules:
      - alert: {name}
        expr: pg_up == 1
        labels: {{severity: low}}
"""


def test_a_removed_rule_resolves_its_incident_on_reload(pg_cluster: ThrowawayCluster,
                                                        tmp_path: Path) -> None:
    dsn = pg_cluster.dsn(dbname="piggybong", user="piggywatch",
                         password=pg_cluster.role_password("piggywatch"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.format(name="BeforeReload"))
    with WebhookServer() as hook:
        config = tmp_path / "piggywatch.yaml"
        config.write_text(fast_rules_config(dsn) + f"""\
receivers:
  - name: hook
    webhook: {{url: "{hook.url}"}}
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
""")

        def statuses(name: str) -> list[str]:
            return [p["status"] for p in hook.posts
                    if p["groupLabels"].get("alertname") == name]

        with DaemonProcess(config, tmp_path) as proc:
            proc.wait_until(lambda: statuses("BeforeReload") == ["firing"], 15, "the page")
            rules.write_text(RULES.format(name="AfterReload"))
            assert proc.proc is not None
            os.kill(proc.proc.pid, signal.SIGHUP)
            proc.wait_until(lambda: "resolved" in statuses("BeforeReload"), 15,
                            "the removed rule's incident resolved")
            proc.wait_until(lambda: statuses("AfterReload") == ["firing"], 15, "the new page")
            proc.wait_until_settled(after=time.time())
            proc.terminate()
        assert statuses("BeforeReload") == ["firing", "resolved"]
