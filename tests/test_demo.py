"""`piggywatch demo`, the embedded default, as a newcomer would run it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.metrics import parse_metrics
from tests.support.ports import free_port

TOKEN = "demo-test-token-0123"


def test_demo_serves_statement_metrics_within_30s_and_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    stderr = (tmp_path / "demo.stderr").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "piggywatch", "demo",
                             "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                 "PIGGYWATCH_API_TOKEN": TOKEN})
    try:
        started = time.monotonic()
        calls: list[float] = []
        while time.monotonic() - started < 30 and not calls:
            assert proc.poll() is None, Path(stderr.name).read_text()
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            values = parse_metrics(text)
            calls = [v for (name, _), v in values.items()
                     if name == "pg_stat_statements_calls_total"]
            time.sleep(0.5)
        assert calls, "no pg_stat_statements metrics within 30 s"
        assert sum(calls) > 0
        statements = httpx.get(f"http://127.0.0.1:{port}/api/v1/statements", timeout=2,
                               headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert statements["data"]["piggybong"], "the statements API lists the demo's queries"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert TOKEN not in out, "a token the user gave is never printed"
    pg_port = int(re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", pg_port)) != 0, "the demo database is still up"
    stderr.seek(0)
    assert "Traceback" not in stderr.read()
