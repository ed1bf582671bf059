"""`piggywatch alerts` and `silence list` against a real daemon: label values, comments and
names from the API reach the terminal only as visible escapes, never as control characters
the terminal would act on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.daemon_process import DaemonProcess
from tests.support.servers.webhook import WebhookServer

# ESC sequences that clear the screen and retitle the window, BEL, a carriage return that
# would overwrite the row, DEL, a C1 control (NEL) and a right-to-left override that would
# reverse what follows: what a hostile or broken exporter could put in a label value.
HOSTILE = "a\x1b[2J\x1b]0;pwned\x07\rX\x7f\x85\u202eevil\u2066z\t"
SHOWN = r"a\x1b[2J\x1b]0;pwned\x07\x0dX\x7f\x85\u202eevil\u2066z\x09"
RULES = """\
groups:
  - name: hostile
    rules:
      - alert: HostileLabels
        expr: absent(nothing_is_called_this)
        labels:
          severity: high
          detail: "a\\e[2J\\e]0;pwned\\a\\rX\\x7f\\x85\\u202eevil\\u2066z\\t"
"""
CONFIG = """\
targets:
  - name: main
    dsn: postgresql://nobody@127.0.0.1:1/none
    collectors:
      connections: {enabled: false}
      database: {enabled: false}
      statements: {enabled: false}
      tables: {enabled: false}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: sqlite:///./state.db
receivers:
  - name: hook
    webhook: {url: "WEBHOOK_URL"}
route: {receiver: hook, group_wait: 0s}
"""
# C0 controls but newline, DEL, C1 controls, bidi embeddings/overrides/isolates and marks.
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069\u2028\u2029]")


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIGGYWATCH_API_TOKEN": daemon.token, "PIGGYWATCH_URL": daemon.url}
    return subprocess.run([sys.executable, "-m", "piggywatch", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_alerts_and_silences_tables_show_control_characters_as_escapes(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    config = tmp_path / "piggywatch.yaml"
    hook = WebhookServer().start()
    config.write_text(CONFIG.replace("WEBHOOK_URL", hook.url))
    with hook, DaemonProcess(config, tmp_path) as daemon:
        daemon.wait_until(lambda: bool(daemon.api("GET", "/api/v1/alerts").json()
                                       ["data"]["alerts"]), 20, "the hostile alert")
        [alert] = daemon.api("GET", "/api/v1/alerts").json()["data"]["alerts"]
        assert alert["labels"]["detail"] == HOSTILE, "the API keeps the value as it is"
        silenced = daemon.api("POST", "/api/v1/silences", {
            "matchers": ['alertname="Nothing"'], "duration": "1h",
            "created_by": "mallory\x1b[8m", "comment": "hidden\u202e\x07"})
        assert silenced.status_code == 200, silenced.text
        shown = cli(daemon, "alerts")
        silences = cli(daemon, "silence", "list")
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if "HostileLabels" in line]
    assert f"detail={SHOWN}" in row, row
    assert CONTROL.findall(shown.stdout) == []
    assert silences.returncode == 0, silences.stderr
    assert CONTROL.findall(silences.stdout) == []
    assert r"mallory\x1b[8m" in silences.stdout and r"hidden\u202e\x07" in silences.stdout
