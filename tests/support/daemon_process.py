"""Runs `piggywatch run` as a real subprocess and reads its /metrics, as Prometheus would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from tests.support.metrics import Values, parse_metrics, total
from tests.support.ports import ATTEMPTS, free_port
from tests.support.waiting import wait_for

API_TOKEN = "test-api-token-0123456789"


class DaemonProcess:
    """`python -m piggywatch run` on a free loopback port, with stderr captured to a file.

    The API token is set through PIGGYWATCH_SERVER__API_TOKEN (a configuration override)
    and ``api()`` sends it.
    """

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None,
                 *, port: int | None = None, token: str = API_TOKEN,
                 wait_ready: bool = True) -> None:
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.config = config
        self.token = token
        # Enter returns once /readyz answers 200, or with wait_ready false once /healthz does.
        self._ready_path = "/readyz" if wait_ready else "/healthz"
        self.stderr_path = workdir / "daemon.stderr"
        self._env = {**os.environ, "PIGGYWATCH_SERVER__API_TOKEN": token, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._stderr = self.stderr_path.open("wb")
        for attempt in range(ATTEMPTS):
            self._stderr.seek(0)
            self._stderr.truncate()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "piggywatch", "run", "--config", str(self.config),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=subprocess.DEVNULL, stderr=self._stderr, env=self._env)
            proc = self.proc
            wait_for(lambda p=proc: p.poll() is not None or  # type: ignore[misc]
                     self.get(self._ready_path).status_code == 200,
                     20, f"{self._ready_path} is 200", interval=0.1, details=self.stderr)
            if proc.poll() is None:
                return self
            # Another process took the free port between its choice and the daemon's bind.
            if self._fixed_port or attempt == ATTEMPTS - 1 or \
                    "Address already in use" not in self.stderr():
                raise AssertionError(f"the daemon exited with {proc.returncode} before it was "
                                     f"ready\n{self.stderr()}")
            self.port = free_port()
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
        """Poll ``condition`` (failing with the daemon's log after ``timeout`` seconds)."""
        wait_for(condition, timeout, what, interval=0.1, details=self.stderr)

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

    def wait_until_settled(self, after: float, timeout: float = 30.0,
                           passes: int = 2) -> Values:
        """The positive signal that nothing more is on its way: wait until the wall clock is
        past ``after`` (e.g. the end of an escalation's wait), then until the rules were
        evaluated ``passes`` more times (the dispatcher runs on the evaluating thread, so it
        ran its passes too), with the outbox empty and the notification counts unchanged
        across those passes. Returns the metrics read last; a test then asserts that
        nothing (more) was sent."""
        wait_for(lambda: time.time() >= after, max(0.0, after - time.time()) + timeout,
                 "the clock to pass the moment asked", interval=0.05)
        first = self.metrics()
        seen: list[Values] = [first]

        def settled() -> bool:
            values = self.metrics()
            last = seen[-1]
            seen.append(values)
            return (total(values, "piggywatch_rule_evaluations_total")
                    >= total(first, "piggywatch_rule_evaluations_total") + passes
                    and total(values, "piggywatch_outbox_depth") == 0
                    and _notifications(values) == _notifications(last))

        wait_for(settled, timeout, f"{passes} evaluations with the outbox empty and no "
                 "notification counted in between", interval=0.2, details=self.stderr)
        return seen[-1]

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


def _notifications(values: Values) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (name, labels), v in values.items()
            if name in ("piggywatch_notifications_total",
                        "piggywatch_notifications_created_total")}


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
