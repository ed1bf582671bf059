"""HTTP smoke probes: the handbook's smoke tests as configuration, run with httpx.

Metric names follow blackbox_exporter (``probe_success``, ``probe_duration_seconds``,
``probe_http_status_code``), plus latency percentiles over the last results. A failing
probe is an observation (``probe_success 0``), not a collector error.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr

from piggywatch.collectors.base import SourceContext, SourceJob
from piggywatch.config_types import Duration
from piggywatch.store import MetricKind, MetricSpec, Sample, labels_of

log = logging.getLogger(__name__)

# Header names whose values are credentials (Authorization, apikey, X-Api-Key, Cookie...).
_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|session", re.IGNORECASE)

_G = MetricKind.GAUGE
SPECS = (
    MetricSpec("probe_success", _G, "Whether the last probe passed every check (1) or not (0)"),
    MetricSpec("probe_duration_seconds", _G, "How long the last probe took"),
    MetricSpec("probe_http_status_code", _G,
               "HTTP status of the last probe; 0 when no response came"),
    MetricSpec("probe_duration_p50_seconds", _G, "Median duration over the recent probes"),
    MetricSpec("probe_duration_p95_seconds", _G,
               "95th percentile duration over the recent probes"),
)


if TYPE_CHECKING:
    import httpx


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class JsonCheck(_Strict):
    """The response is JSON and the value at ``path`` (dotted, e.g. ``data.0.status``) equals."""

    path: str = Field(min_length=1)
    """Dotted path into the JSON document, e.g. `data.0.status`."""
    equals: JsonValue
    """The value expected there."""


class ProbeConfig(_Strict):
    """One smoke test: a request, and what its response must look like."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """The ``probe`` label of its metrics."""
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    """The HTTP method."""
    url: str = Field(pattern=r"^https?://")
    """The URL requests go to."""
    headers: dict[str, SecretStr] = {}
    """Secrets (API keys, bearer tokens) are common here, so values are never logged."""
    body: str | None = None
    """The request body."""
    expected_status: list[int] = Field(default=[200], min_length=1)
    """Status codes that pass."""
    body_contains: str | None = None
    """Text the response body must contain."""
    json_path: JsonCheck | None = None
    """A value the JSON response must hold."""
    follow_redirects: bool = False
    """Whether redirects are followed."""
    timeout: Duration = 10.0
    """Httpx applies it to connecting and to each read: a server that answers nothing fails after
    ``timeout``; one trickling bytes slower than that fails too."""
    interval: Duration = 60.0
    """How often it is sampled."""
    critical: bool = False
    """A critical probe (e.g. sign-in) pages as critical when it fails; others as high."""
    window: int = Field(default=60, ge=1, le=10_000)
    """How many recent results the percentiles are taken over."""

    def secrets(self) -> list[str]:
        """Values to scrub from logs and errors: those of headers that carry credentials.

        Not every header value: scrubbing ``application/json`` everywhere would garble logs.
        """
        return [v.get_secret_value() for k, v in self.headers.items()
                if _SENSITIVE_HEADER.search(k) and v.get_secret_value()]


class ProbeCollector:
    """Runs one probe per cycle and keeps its last ``window`` durations for percentiles."""

    name = "probe"

    def __init__(self, config: ProbeConfig, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._config = config
        # Every series of the probe carries ``critical`` so rules can page differently.
        self._labels = labels_of(probe=config.name, critical=str(config.critical).lower())
        import httpx  # only when a probe is configured: the config model needs no httpx

        self._httpx = httpx
        self._client = httpx.Client(timeout=config.timeout, transport=transport,
                                    follow_redirects=config.follow_redirects)
        self._durations: deque[float] = deque(maxlen=config.window)
        self._lock = threading.Lock()
        self.last_failure: str | None = None

    @property
    def config(self) -> ProbeConfig:
        """The probe's configuration."""
        return self._config

    def specs(self) -> Sequence[MetricSpec]:
        """The metric families of this collector."""
        return SPECS

    def collect(self, now: float) -> list[Sample]:
        """Run the probe once. Never raises for a failing endpoint: that is ``probe_success 0``."""
        with self._lock:
            status, duration, failure = self._probe()
            self._durations.append(duration)
            window = sorted(self._durations)
        if failure != self.last_failure and failure is not None:
            log.warning("probe %s failed: %s", self._config.name, failure)
        self.last_failure = failure
        labels = self._labels
        return [
            Sample("probe_success", labels, 0.0 if failure else 1.0, now),
            Sample("probe_duration_seconds", labels, duration, now),
            Sample("probe_http_status_code", labels, float(status), now),
            Sample("probe_duration_p50_seconds", labels, percentile(window, 0.5), now),
            Sample("probe_duration_p95_seconds", labels, percentile(window, 0.95), now),
        ]

    def close(self) -> None:
        """Close the HTTP connection pool (at shutdown)."""
        self._client.close()

    def _probe(self) -> tuple[int, float, str | None]:
        """(status code or 0, seconds taken, why it failed or None)."""
        c = self._config
        headers = {k: v.get_secret_value() for k, v in c.headers.items()}
        started = time.monotonic()
        try:
            response = self._client.request(c.method, c.url, headers=headers,
                                             content=c.body.encode() if c.body else None)
        except self._httpx.TimeoutException:
            return 0, time.monotonic() - started, f"no response within {c.timeout:g}s"
        except self._httpx.HTTPError as exc:
            return 0, time.monotonic() - started, f"request failed: {type(exc).__name__}: {exc}"
        duration = time.monotonic() - started
        return response.status_code, duration, check_response(c, response)


def check_response(config: ProbeConfig, response: httpx.Response) -> str | None:
    """Why ``response`` fails the probe's checks, or None when it passes them all."""
    if response.status_code not in config.expected_status:
        return f"status {response.status_code}, expected one of {config.expected_status}"
    if config.body_contains is not None and config.body_contains not in response.text:
        return f"the body does not contain {config.body_contains!r}"
    if config.json_path is not None:
        try:
            document = response.json()
        except ValueError:
            return "the body is not JSON"
        found, value = json_lookup(document, config.json_path.path)
        if not found:
            return f"the JSON has nothing at {config.json_path.path!r}"
        if value != config.json_path.equals:
            return (f"{config.json_path.path} is {value!r}, "
                    f"expected {config.json_path.equals!r}")
    return None


def json_lookup(document: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (``a.b.0.c``; a leading ``$.`` is allowed) into a JSON document."""
    node = document
    for part in path.removeprefix("$.").split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and \
                -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolated linearly (numpy's default)."""
    if not ordered:
        return math.nan
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def build(configs: list[ProbeConfig], context: SourceContext) -> list[SourceJob]:
    """One collector per probe."""
    return [(f"probe:{p.name}", None, ProbeCollector(p), p.interval) for p in configs]
