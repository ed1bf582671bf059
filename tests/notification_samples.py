"""Alerts and notifications as the pipeline hands them to notifiers, at fixed times, for
the notifier tests."""

from __future__ import annotations

from collections.abc import Mapping

from piggywatch.alerting.model import (
    Action,
    AlertInfo,
    AlertStatus,
    Notification,
    incident_key,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
RUNBOOK = "https://runbooks.example.com/postgres#connectionshigh"
EXTERNAL_URL = "https://piggywatch.example.com"


def alert(name: str = "PostgresConnectionsHigh", *, target: str = "main",
          severity: str = "high", status: AlertStatus = AlertStatus.FIRING,
          value: str = "0.85", starts_at: float = T0, ends_at: float | None = None,
          annotations: Mapping[str, str] | None = None, fingerprint: str = "",
          extra_labels: Mapping[str, str] | None = None, **labels: str) -> AlertInfo:
    """An alert with the shipped rules' labels and annotations."""
    all_labels = {"alertname": name, "severity": severity, "target": target, **labels,
                  **(extra_labels or {})}
    if annotations is None:
        annotations = {"summary": f"{target}: 85% of usable connections in use",
                       "description": "Client connections are above 80% of max_connections.",
                       "runbook": RUNBOOK}
    return AlertInfo(
        fingerprint=fingerprint or f"fp-{name}-{target}", status=status, labels=all_labels,
        annotations=dict(annotations), starts_at=starts_at, ends_at=ends_at, value=value,
        generator_url=f"{EXTERNAL_URL}/api/v1/alerts?alertname={name}")


def notification(*alerts: AlertInfo, action: Action = Action.TRIGGER, level: int = 1,
                 acked_by: str | None = None, acked_at: float | None = None,
                 created_at: float = T0 + 300, id: str = "n-1", receiver: str = "oncall",
                 group_labels: Mapping[str, str] | None = None,
                 external_url: str = EXTERNAL_URL) -> Notification:
    """A notification of the incident grouped by alertname and target."""
    alerts = alerts or (alert(),)
    if group_labels is None:
        group_labels = {"alertname": alerts[0].name, "target": alerts[0].labels["target"]}
    return Notification(
        id=id, receiver=receiver, action=action,
        incident=incident_key("route-0", group_labels), group_labels=dict(group_labels),
        alerts=tuple(alerts), created_at=created_at, level=level, acked_by=acked_by,
        acked_at=acked_at, external_url=external_url)


def resolved(a: AlertInfo, ends_at: float = T0 + 900) -> AlertInfo:
    """``a`` after it resolved."""
    return AlertInfo(fingerprint=a.fingerprint, status=AlertStatus.RESOLVED, labels=a.labels,
                     annotations=a.annotations, starts_at=a.starts_at, ends_at=ends_at,
                     value=a.value, generator_url=a.generator_url)
