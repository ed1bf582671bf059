"""PagerDuty without inbound traffic: poll the REST API for the incidents PiggyWatch
triggered (``GET /incidents?incident_key=…``, read-only API key) and apply what changed as
a webhook delivery would be applied. One request per open incident per interval, well
under the REST API's rate limit for a handful of open incidents."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from piggywatch.ack.pagerduty_webhook import PagerDutyChange, parse_time
from piggywatch.alerting.channels.pagerduty import PagerDutyReceiver

if TYPE_CHECKING:
    import httpx

    from piggywatch.ack.service import AckService
    from piggywatch.alerting.incidents import Incidents

__all__ = ["PagerDutyPoller", "change_from_incident"]

log = logging.getLogger(__name__)


def change_from_incident(incident: dict[str, Any], key: str,
                         last_status: str | None) -> PagerDutyChange | None:
    """The change an incident of the REST API shows, against the status last applied:
    acknowledged or resolved; triggered again after an applied acknowledgement is an
    ``incident.unacknowledged``; None when there is nothing to apply."""
    status = incident.get("status")
    if status not in ("acknowledged", "resolved", "triggered"):
        return None
    if status == "triggered" and last_status != "acknowledged":
        return None
    occurred = parse_time(incident.get("last_status_change_at")) or parse_time(
        incident.get("created_at"))
    if occurred is None:
        return None
    by = incident.get("last_status_change_by") or {}
    event_type = {"acknowledged": "incident.acknowledged", "resolved": "incident.resolved",
                  "triggered": "incident.unacknowledged"}[status]
    incident_id = str(incident.get("id") or "")
    number = incident.get("incident_number")
    agent = by.get("summary", "") if isinstance(by, dict) else ""
    if status == "acknowledged":
        acks = incident.get("acknowledgements") or []
        if acks and isinstance(acks[-1], dict):
            agent = (acks[-1].get("acknowledger") or {}).get("summary", agent)
    return PagerDutyChange(
        event_id=f"poll:{incident_id}:{status}:{incident.get('last_status_change_at')}",
        event_type=event_type, occurred_at=occurred, incident_key=key,
        incident_id=incident_id, html_url=str(incident.get("html_url") or ""),
        number=number if isinstance(number, int) else None, agent=str(agent or ""),
        agent_id=str(by.get("id", "") if isinstance(by, dict) else ""))


class PagerDutyPoller:
    """Polls one PagerDuty receiver's incidents on its own thread."""

    def __init__(self, receiver: str, settings: PagerDutyReceiver, service: AckService,
                 incidents: Incidents, *, client: httpx.Client | None = None) -> None:
        assert settings.api_key is not None
        self._receiver = receiver
        self._settings = settings
        self._service = service
        self._incidents = incidents
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = ""

    def start(self) -> None:
        """Poll every ``poll_interval`` until stopped."""
        self._thread = threading.Thread(target=self._loop, name=f"pagerduty-poll-"
                                        f"{self._receiver}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.poll_interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("PagerDuty polling for receiver %s failed", self._receiver)

    def poll_once(self) -> int:
        """Look at every open incident notified to this receiver; returns how many
        changes were applied."""
        applied = 0
        for esc in self._incidents.incidents():
            if self._receiver not in esc.notified or self._stop.is_set():
                continue
            incident = self._fetch(esc.incident)
            if incident is None:
                continue
            last = self._service.last_pagerduty_status(esc.incident)
            change = change_from_incident(incident, esc.incident, last)
            if change is not None and self._service.apply_pagerduty(change) == "applied":
                applied += 1
        return applied

    def _fetch(self, key: str) -> dict[str, Any] | None:
        import httpx

        from piggywatch.alerting.notifiers._common import http_client

        assert self._settings.api_key is not None
        client = self._client or http_client()
        url = self._settings.api_url.rstrip("/") + "/incidents"
        try:
            response = client.get(url, params={"incident_key": key, "date_range": "all"},
                                  headers={"Authorization": "Token token="
                                           + self._settings.api_key.get_secret_value(),
                                           "Accept": "application/vnd.pagerduty+json;version=2"},
                                  timeout=self._settings.timeout)
        except httpx.HTTPError as exc:
            self._note_failure(f"{type(exc).__name__}")
            return None
        if response.status_code != 200:
            self._note_failure(f"HTTP {response.status_code}")
            return None
        if self._failing:
            log.info("PagerDuty polling for receiver %s works again", self._receiver)
            self._failing = ""
        try:
            incidents = response.json().get("incidents") or []
        except ValueError:
            return None
        mine = [i for i in incidents if isinstance(i, dict) and i.get("incident_key") == key]
        return mine[-1] if mine else None

    def _note_failure(self, why: str) -> None:
        if why != self._failing:
            log.warning("PagerDuty polling for receiver %s failed: %s (the API key is never "
                        "logged); trying again every %gs", self._receiver, why,
                        self._settings.poll_interval)
            self._failing = why
