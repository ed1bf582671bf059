"""A webhook receiver that checks Alertmanager's webhook JSON, and an Alertmanager-like
``/api/v2/alerts``."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from tests.support.servers._http import LocalHTTPServer, RecordedRequest, Reply

WEBHOOK_KEYS = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                "commonLabels", "commonAnnotations", "externalURL", "alerts"}
WEBHOOK_ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL",
                      "fingerprint"}
POSTABLE_KEYS = {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _time_errors(value: Any, at: str) -> list[str]:
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        return [f"{at}: not an RFC 3339 time"]
    return []


def _string_map_errors(value: Any, at: str) -> list[str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        return [f"{at}: must map strings to strings"]
    return []


def validate_webhook(body: Any) -> list[str]:
    """Every way ``body`` departs from Alertmanager's webhook payload, version 4. Extra
    top-level keys are allowed (receivers ignore what they do not know)."""
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = [f"missing '{k}'" for k in sorted(WEBHOOK_KEYS - set(body))]
    if body.get("version") != "4":
        problems.append("version must be \"4\"")
    if body.get("status") not in ("firing", "resolved"):
        problems.append("status must be firing or resolved")
    if not isinstance(body.get("truncatedAlerts"), int):
        problems.append("truncatedAlerts must be an integer")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        problems += _string_map_errors(body.get(key), key)
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        return [*problems, "alerts must be an array"]
    for i, alert in enumerate(alerts):
        at = f"alerts[{i}]"
        if not isinstance(alert, dict):
            problems.append(f"{at}: must be an object")
            continue
        problems += [f"{at}: missing '{k}'" for k in sorted(WEBHOOK_ALERT_KEYS - set(alert))]
        problems += [f"{at}: unknown '{k}'" for k in sorted(set(alert) - WEBHOOK_ALERT_KEYS)]
        if alert.get("status") not in ("firing", "resolved"):
            problems.append(f"{at}.status must be firing or resolved")
        problems += _string_map_errors(alert.get("labels"), f"{at}.labels")
        problems += _string_map_errors(alert.get("annotations"), f"{at}.annotations")
        for key in ("startsAt", "endsAt"):
            problems += _time_errors(alert.get(key), f"{at}.{key}")
    return problems


def validate_postable_alerts(body: Any) -> list[str]:
    """Every way ``body`` departs from Alertmanager's ``postableAlerts``."""
    if not isinstance(body, list):
        return ["body must be an array of alerts"]
    problems: list[str] = []
    for i, alert in enumerate(body):
        at = f"[{i}]"
        if not isinstance(alert, dict):
            problems.append(f"{at}: must be an object")
            continue
        problems += [f"{at}: unknown '{k}'" for k in sorted(set(alert) - POSTABLE_KEYS)]
        labels = alert.get("labels")
        problems += _string_map_errors(labels, f"{at}.labels")
        if isinstance(labels, dict):
            if not labels:
                problems.append(f"{at}.labels: at least one label pair required")
            problems += [f"{at}.labels: invalid label name {k!r}" for k in labels
                         if not _LABEL_NAME.match(str(k))]
            problems += [f"{at}.labels: empty value for {k!r}" for k, v in labels.items()
                         if v == ""]
        if "annotations" in alert:
            problems += _string_map_errors(alert["annotations"], f"{at}.annotations")
        for key in ("startsAt", "endsAt"):
            if key in alert:
                problems += _time_errors(alert[key], f"{at}.{key}")
        if "generatorURL" in alert and not str(alert["generatorURL"]).startswith(
                ("http://", "https://")):
            problems.append(f"{at}.generatorURL: must be an absolute URL")
    return problems


class WebhookServer(LocalHTTPServer):
    """Accepts POSTs on any path with 200 and keeps their JSON bodies in ``posts``; with
    ``strict`` (the default) a body that is not a valid webhook payload gets 400."""

    def __init__(self, *, strict: bool = True) -> None:
        super().__init__()
        self.strict = strict
        self._posts: list[Any] = []
        self._state_lock = threading.Lock()

    @property
    def url(self) -> str:
        """A URL to configure (the path is arbitrary and embeds a secret-looking token)."""
        return f"{self.base_url}/hooks/piggywatch/s3cr3t-token"

    @property
    def posts(self) -> list[Any]:
        """The accepted bodies, in order."""
        with self._state_lock:
            return list(self._posts)

    def handle(self, request: RecordedRequest) -> Reply:
        if request.method != "POST":
            return Reply(405, "method not allowed")
        try:
            body = request.json()
        except ValueError:
            return Reply(400, "body is not JSON")
        if self.strict:
            problems = validate_webhook(body)
            if problems:
                return Reply(400, "; ".join(problems))
        with self._state_lock:
            self._posts.append(body)
        return Reply(200, "")


class AlertmanagerServer(LocalHTTPServer):
    """``POST /api/v2/alerts`` with Alertmanager's validation (400 with the reason), and
    ``GET /api/v2/alerts`` listing what it holds. ``url`` is the base to configure."""

    def __init__(self) -> None:
        super().__init__()
        self._batches: list[list[dict[str, Any]]] = []
        self._alerts: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        self._state_lock = threading.Lock()

    @property
    def url(self) -> str:
        """Alertmanager's base URL."""
        return self.base_url

    @property
    def batches(self) -> list[list[dict[str, Any]]]:
        """Every accepted POST body, in order."""
        with self._state_lock:
            return list(self._batches)

    def alerts(self) -> list[dict[str, Any]]:
        """The latest version of each alert (by label set), as last posted."""
        with self._state_lock:
            return list(self._alerts.values())

    def active(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The alerts without an end, or ending after ``now``."""
        moment = now or datetime.now(UTC)
        return [a for a in self.alerts()
                if "endsAt" not in a or datetime.fromisoformat(a["endsAt"]) > moment]

    def handle(self, request: RecordedRequest) -> Reply:
        if request.path != "/api/v2/alerts":
            return Reply(404, "not found")
        if request.method == "GET":
            return Reply(200, self.alerts())
        if request.method != "POST":
            return Reply(405, "method not allowed")
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {"code": 400, "message": "body is not JSON"})
        problems = validate_postable_alerts(body)
        if problems:
            return Reply(400, {"code": 400, "message": "; ".join(problems)})
        with self._state_lock:
            self._batches.append(body)
            for alert in body:
                self._alerts[tuple(sorted(alert["labels"].items()))] = alert
        return Reply(200, b"")
