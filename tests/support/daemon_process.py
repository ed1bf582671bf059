"""Runs `piggywatch run` as a real subprocess and reads its /metrics, as Prometheus would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> Values:
    """Every sample of an exposition, keyed by (name, labels) as exposed.

    prometheus-client's parser names every sample of a counter ``<family>_total``, also
    one exposed without the suffix (postgres_exporter's ``pg_stat_database_xact_commit``,
    which Prometheus stores under that name): such names are given back as exposed.
    """
    exposed = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines()
               if line and not line.startswith("#")}

    def as_exposed(name: str) -> str:
        if name not in exposed and name.endswith("_total") and name[:-6] in exposed:
            return name[:-6]
        return name

    return {(as_exposed(s.name), frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(values: Values, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``, or None."""
    found = [v for (n, ls), v in values.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
    return found[0] if found else None


API_TOKEN = "test-api-token-0123456789"


class DaemonProcess:
    """`python -m piggywatch run` on a free loopback port, with stderr captured to a file.

    The API token is set through PIGGYWATCH_SERVER__API_TOKEN (a configuration override)
    and ``api()`` sends it.
    """

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None,
                 *, port: int | None = None, token: str = API_TOKEN) -> None:
        self.port = port or free_port()
        self.config = config
        self.token = token
        self.stderr_path = workdir / "daemon.stderr"
        self._env = {**os.environ, "PIGGYWATCH_SERVER__API_TOKEN": token, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "piggywatch", "run", "--config", str(self.config),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=self._env)
        self.wait_until(lambda: self.get("/readyz").status_code == 200, 20, "/readyz is 200")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()

    def get(self, path: str) -> httpx.Response:
        try:
            return httpx.get(self.url + path, timeout=5)
        except httpx.TransportError:
            assert self.proc is not None and self.proc.poll() is None, self.stderr()
            return httpx.Response(599)

    def api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """Call the API with the token; a refused connection raises."""
        return httpx.request(method, self.url + path, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {self.token}"})

    def metrics(self) -> Values:
        response = self.get("/metrics")
        assert response.status_code == 200
        return parse_metrics(response.text)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.stderr()}")

    def wait_for_metric(self, condition: Callable[[Values], bool], timeout: float,
                        what: str) -> Values:
        found: list[Values] = []

        def check() -> bool:
            values = self.metrics()
            if condition(values):
                found.append(values)
                return True
            return False

        self.wait_until(check, timeout, what)
        return found[0]

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns the exit code and how long the exit took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout + 5)
        return code, time.monotonic() - started

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")


def fast_rules_config(dsn: str) -> str:
    """A config that samples connections every second and evaluates rules.yaml every second.

    Tests append their own receivers, routes or logging to it.
    """
    return f"""\
targets:
  - name: main
    dsn: {dsn}
    collectors:
      connections: {{interval: 1s}}
      database: {{enabled: false}}
      statements: {{enabled: false}}
      tables: {{enabled: false}}
rule_files: [rules.yaml]
evaluation_interval: 1s
state: sqlite:///./state.db
"""
