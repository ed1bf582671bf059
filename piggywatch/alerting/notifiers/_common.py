"""What several notifiers share: reading a notification the way every channel shows it,
times on the wire, and turning an HTTP answer or a network error into an Outcome.

httpx is imported only by the functions that send, so the e-mail notifier, which
formats with this module, never pulls it in.
"""

from __future__ import annotations

import email.utils
import functools
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from piggywatch.alerting.model import (
    Action,
    AlertInfo,
    AlertStatus,
    Delivery,
    Notification,
    Outcome,
)
from piggywatch.observability import Redactor, redact_url

if TYPE_CHECKING:
    import httpx

RUNBOOK_KEYS = ("runbook_url", "runbook")
DASHBOARD_KEYS = ("dashboard_url", "dashboard")
THRESHOLD_KEYS = ("threshold",)
DEFAULT_RETRY_AFTER = 30.0
_DETAIL_LIMIT = 300


def iso8601(ts: float) -> str:
    """A Unix time as RFC 3339 / ISO 8601 in UTC with milliseconds (``…T08:42:58.315Z``)."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def ordered_alerts(notification: Notification) -> list[AlertInfo]:
    """Firing alerts first, then by start and fingerprint: the same order on every resend,
    so every channel shows the same alert as the main one."""
    return sorted(notification.alerts,
                  key=lambda a: (a.status is not AlertStatus.FIRING, a.starts_at, a.fingerprint))


def primary_alert(notification: Notification) -> AlertInfo | None:
    """The alert a one-line channel shows (the oldest firing one), if any."""
    alerts = ordered_alerts(notification)
    return alerts[0] if alerts else None


def first_start(notification: Notification) -> float:
    """When the incident's oldest alert started (the notification's time if it has none)."""
    return min((a.starts_at for a in notification.alerts), default=notification.created_at)


def pick(notification: Notification, keys: tuple[str, ...]) -> str:
    """The first non-empty annotation, else label, among ``keys``, looking at the alerts in
    ``ordered_alerts`` order; thresholds are as often a label as an annotation."""
    alerts = ordered_alerts(notification)
    for source in ("annotations", "labels"):
        for alert in alerts:
            values: Mapping[str, str] = getattr(alert, source)
            for key in keys:
                if values.get(key):
                    return values[key]
    return ""


def common_items(maps: list[Mapping[str, str]]) -> dict[str, str]:
    """The key/value pairs every map has (Alertmanager's commonLabels / commonAnnotations)."""
    if not maps:
        return {}
    common = dict(maps[0])
    for other in maps[1:]:
        common = {k: v for k, v in common.items() if other.get(k) == v}
    return dict(sorted(common.items()))


def status_line(notification: Notification) -> str:
    """``Firing (2 alerts)``, ``Acknowledged by alice``, ``Resolved``: the state in words."""
    if notification.action is Action.RESOLVE or not notification.firing:
        return "Resolved"
    if notification.action is Action.ACKNOWLEDGE:
        who = notification.acked_by or "someone"
        return f"Acknowledged by {who}"
    count = len(notification.firing)
    return f"Firing ({count} alert{'s' if count != 1 else ''})"


def receipt_state(notification: Notification) -> str:
    """What a receipt records about the incident after ``notification``: ``resolved`` or
    ``open``."""
    resolved = notification.action is Action.RESOLVE or not notification.firing
    return "resolved" if resolved else "open"


def starts_over(notification: Notification, receipt: Mapping[str, str]) -> bool:
    """Whether ``notification`` must open a new message or thread despite a receipt: the
    incident resolved and fired again (the incident key is the same; the outbox keeps
    receipts for days)."""
    return notification.action is Action.TRIGGER and receipt.get("state") == "resolved"


def is_http_url(value: str) -> bool:
    """Only http(s) links are rendered: an annotation must not inject ``javascript:``."""
    return value.startswith(("https://", "http://"))


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending in … when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret replaced, cut to a log-friendly length. A secret URL is
    redacted by structure (see ``Redactor``): a failing endpoint that echoes the request's
    path, or redirects to another form of the URL, shows only ``scheme://host/…``."""
    return truncate(" ".join(_redactor(secrets).scrub(text).split()), _DETAIL_LIMIT)


@functools.lru_cache(maxsize=64)
def _redactor(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    reference = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - reference)


def http_delivery(status: int, headers: Mapping[str, str], body: str, *, channel: str,
                  secrets: tuple[str, ...] = ()) -> Delivery:
    """Alertmanager's classification: 2xx accepted; 429, 408 and 5xx worth retrying
    (Retry-After honoured on 429); any other answer is a refusal retrying won't change."""
    if 200 <= status < 300:
        return Delivery(Outcome.ACCEPTED, detail=f"{channel} answered {status}")
    detail = f"{channel} answered {status}"
    if body.strip():
        detail += ": " + body
    detail = scrub(detail, secrets)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return Delivery(Outcome.RETRY, detail=detail,
                        retry_after=DEFAULT_RETRY_AFTER if retry_after is None else retry_after)
    if status == 408 or status >= 500:
        return Delivery(Outcome.RETRY, detail=detail,
                        retry_after=parse_retry_after(headers.get("retry-after")))
    return Delivery(Outcome.PERMANENT, detail=detail)


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx.Client:
    """One process-wide httpx client: one TLS context and connection pool for every HTTP
    channel (a CA bundle per receiver would cost memory); timeouts are per request."""
    global _client
    with _client_lock:
        if _client is None:
            import httpx

            _client = httpx.Client(headers={"User-Agent": "PiggyWatch"}, follow_redirects=False)
        return _client


def post_json(url: str, body: Any, *, timeout: float, channel: str,
              secrets: tuple[str, ...] = (), headers: Mapping[str, str] | None = None,
              client: httpx.Client | None = None) -> tuple[Delivery, httpx.Response | None]:
    """POST ``body`` as JSON; never raises. Network failures are RETRY, a URL that cannot
    work or a body that cannot be encoded is PERMANENT; the response is returned for
    channels that read its body."""
    import httpx

    try:
        # ASCII JSON, as slack-sdk sends it: a lone surrogate (half an emoji) in a label
        # goes out as its \u escape, where httpx's UTF-8 JSON could not encode it at all.
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        return Delivery(Outcome.PERMANENT,
                        detail=f"the {channel} body cannot be encoded as JSON: {exc}"), None
    try:
        response = (client or http_client()).post(
            url, content=content, timeout=timeout,
            headers={"Content-Type": "application/json", **dict(headers or {})})
    except httpx.UnsupportedProtocol:
        return Delivery(Outcome.PERMANENT, detail=f"{channel} URL has an unsupported scheme"), None
    except httpx.InvalidURL:
        return Delivery(Outcome.PERMANENT, detail=f"{channel} URL is not valid"), None
    except httpx.TimeoutException as exc:
        return Delivery(Outcome.RETRY, detail=scrub(
            f"{channel} {redact_url(url)} timed out after {timeout:g}s "
            f"({type(exc).__name__})", secrets)), None
    except httpx.HTTPError as exc:
        # The message of a transport error names the failure, not the URL; scrubbed anyway.
        return Delivery(Outcome.RETRY, detail=scrub(
            f"{channel} {redact_url(url)} unreachable: {type(exc).__name__}: {exc}",
            secrets)), None
    delivery = http_delivery(response.status_code, response.headers, response.text,
                             channel=channel, secrets=secrets)
    return delivery, response


# How a message names where an acknowledgement was made (Notification.ack_source).
ACK_PLACES = {"pagerduty": " in PagerDuty", "slack": " in Slack", "email": " by mail link",
              "cli": " with piggywatch ack"}


def ack_note(notification: Notification) -> str:
    """What the message adds about an acknowledgement: that PagerDuty resolved the
    incident while the alert still fires (other notes stay in the ack log)."""
    note = notification.ack_note
    return note if notification.ack_source == "pagerduty" and note.startswith(
        "resolved in PagerDuty") else ""
