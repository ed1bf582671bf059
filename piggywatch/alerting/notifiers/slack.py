"""Slack: a Block Kit message per incident, updated in place (bot token), or a message per
notification (incoming webhook)."""

from __future__ import annotations

import http.client
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piggywatch.ack.slack_interactions import (
    ACK_ACTION,
    SILENCE_HOUR_ACTION,
    SILENCE_RESOLVED_ACTION,
    block_id,
)
from piggywatch.alerting.channels.slack import SlackReceiver
from piggywatch.alerting.model import Action, Delivery, Notification, Outcome
from piggywatch.alerting.notifiers._common import (
    ACK_PLACES,
    DASHBOARD_KEYS,
    DEFAULT_RETRY_AFTER,
    RUNBOOK_KEYS,
    THRESHOLD_KEYS,
    ack_note,
    first_start,
    is_http_url,
    iso8601,
    ordered_alerts,
    parse_retry_after,
    pick,
    post_json,
    primary_alert,
    receipt_state,
    scrub,
    starts_over,
    status_line,
    truncate,
)

if TYPE_CHECKING:
    import httpx
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

__all__ = ["SlackNotifier", "slack_message"]

ACK_COLOUR = "#439FE0"  # Slack's own blue: neither alarming nor "all clear"
# Slack answers these when the fault is on its side or the workspace is busy.
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "rate_limited", "message_limit_exceeded", "service_unavailable",
    "fatal_error", "internal_error", "request_timeout", "team_added_to_org",
})
# The stored message cannot be edited any more: post a new one instead of failing.
GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})

_HEADER_LIMIT = 150
_FIELD_LIMIT = 2000
_TEXT_LIMIT = 3000
_LISTED_ALERTS = 10


class SlackNotifier:
    """With a bot token: ``chat.postMessage`` for an incident's first notification, then
    ``chat.update`` of that message (colour and state) plus a thread reply for every later
    one; the receipt is the message's channel and ts. With an incoming webhook: one new
    message per notification, since a webhook cannot edit.

    Retrying belongs to the outbox, whose worker must not sleep inside ``send``: a 429
    comes back as RETRY with Slack's Retry-After, so no RateLimitErrorRetryHandler. The
    SDK's connection-error handler stays, at one retry: it covers a reset connection
    within a second, before the outbox's backoff would."""

    def __init__(self, settings: SlackReceiver, *, external_url: str = "",
                 http: httpx.Client | None = None) -> None:
        self._settings = settings
        self._external_url = external_url
        self._http = http
        self._client: WebClient | None = None
        if settings.token is not None:
            # Imported here: a webhook-only configuration never loads slack-sdk.
            from slack_sdk import WebClient
            from slack_sdk.http_retry import ConnectionErrorRetryHandler

            self._client = WebClient(
                token=settings.token.get_secret_value(), base_url=settings.base_url,
                timeout=max(1, math.ceil(settings.timeout)),
                retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1)])

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """Post or update the incident's message; never raises."""
        message = slack_message(notification, self._external_url,
                                interactive=self._settings.interactive)
        if self._client is None:
            return self._send_webhook(message)
        if not receipt.get("ts") or not receipt.get("channel") or starts_over(notification,
                                                                              receipt):
            return self._post_new(notification, message)
        channel, ts = receipt["channel"], receipt["ts"]
        # chat.update first: it is idempotent, so when the reply fails and the outbox
        # retries, the message is only updated twice and the reply posted once.
        _, failed, error = self._call("chat.update", channel=channel, ts=ts, **message)
        if error in GONE_ERRORS:
            return self._post_new(notification, message)
        if failed is not None:
            return failed
        previous_level = int(receipt.get("level") or "1")
        escalated = notification.action is Action.TRIGGER and notification.level > previous_level
        _, failed, _ = self._call("chat.postMessage", channel=channel, thread_ts=ts,
                                  text=thread_reply(notification, escalated=escalated),
                                  reply_broadcast=escalated)
        if failed is not None:
            return failed
        level = max(previous_level, notification.level)
        return Delivery(Outcome.ACCEPTED, detail="Slack message updated",
                        receipt={"channel": channel, "ts": ts, "level": str(level),
                                 "state": receipt_state(notification)})

    def _post_new(self, notification: Notification, message: dict[str, Any]) -> Delivery:
        data, failed, _ = self._call("chat.postMessage", channel=self._settings.channel,
                                     unfurl_links=False, unfurl_media=False, **message)
        if failed is not None:
            return failed
        receipt = {"channel": str(data.get("channel", "")), "ts": str(data.get("ts", "")),
                   "level": str(notification.level), "state": receipt_state(notification)}
        return Delivery(Outcome.ACCEPTED, detail="Slack message posted", receipt=receipt)

    def _call(self, method: str, **params: Any
              ) -> tuple[Mapping[str, Any], Delivery | None, str]:
        """Slack's answer, the failed Delivery (None when accepted) and the error code."""
        assert self._client is not None
        from slack_sdk.errors import SlackApiError, SlackClientError

        try:
            response = self._client.api_call(method, json=params)
        except SlackApiError as exc:
            failed = _api_error(method, exc, self._secrets())
            return {}, failed, str(exc.response.get("error", "") or "")
        except ValueError as exc:
            # urllib's answer to a base_url it cannot use: configuration, not an outage.
            return {}, _failure(Outcome.PERMANENT, method, exc, self._secrets()), ""
        except (OSError, http.client.HTTPException, SlackClientError) as exc:
            # Refused, reset, timed out, cut short: the outbox tries again later.
            return {}, _failure(Outcome.RETRY, method, exc, self._secrets()), ""
        data = response.data
        return (data if isinstance(data, dict) else {}), None, ""

    def _send_webhook(self, message: dict[str, Any]) -> Delivery:
        assert self._settings.webhook_url is not None
        url = self._settings.webhook_url.get_secret_value()
        delivery, _ = post_json(url, message, timeout=self._settings.timeout,
                                channel="Slack webhook", secrets=(url,), client=self._http)
        return delivery

    def _secrets(self) -> tuple[str, ...]:
        token = self._settings.token
        return (token.get_secret_value(),) if token is not None else ()


def _api_error(method: str, exc: SlackApiError, secrets: tuple[str, ...]) -> Delivery:
    response = exc.response
    error = str(response.get("error", "") or "")
    status = int(response.status_code or 0)
    # A non-JSON answer (a proxy's 503 page) arrives as an "error" quoting the body.
    detail = scrub(f"Slack {method} answered {status}: {error or 'no error code'}", secrets)
    if status == 429 or error in RETRYABLE_ERRORS:
        seconds = parse_retry_after(_header(response.headers, "retry-after"))
        if status == 429 and seconds is None:
            seconds = DEFAULT_RETRY_AFTER
        return Delivery(Outcome.RETRY, detail=detail, retry_after=seconds)
    if status >= 500:
        return Delivery(Outcome.RETRY, detail=detail)
    return Delivery(Outcome.PERMANENT, detail=detail)


def _failure(outcome: Outcome, method: str, exc: Exception, secrets: tuple[str, ...]
             ) -> Delivery:
    return Delivery(outcome, detail=scrub(f"Slack {method} failed: {type(exc).__name__}: {exc}",
                                          secrets))


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list) else value)
    return None


# --- the message ------------------------------------------------------------------------

def slack_message(notification: Notification, external_url: str = "", *,
                  interactive: bool = False) -> dict[str, Any]:
    """``text`` (the fallback notifications and screen readers show) and one attachment
    whose colour tells the state and whose blocks tell the rest. ``interactive``: the
    receiver's app takes button presses (Acknowledge, Silence)."""
    return {
        "text": fallback_text(notification),
        "attachments": [{"color": colour(notification),
                         "blocks": blocks(notification, external_url,
                                          interactive=interactive)}],
    }


def colour(notification: Notification) -> str:
    """``good`` once resolved, blue once acknowledged, else by severity."""
    if notification.action is Action.RESOLVE or not notification.firing:
        return "good"
    if notification.action is Action.ACKNOWLEDGE:
        return ACK_COLOUR
    return "danger" if notification.severity in ("critical", "high") else "warning"


def _emoji(notification: Notification) -> str:
    if notification.action is Action.RESOLVE or not notification.firing:
        return ":white_check_mark:"
    if notification.action is Action.ACKNOWLEDGE:
        return ":eyes:"
    return ":rotating_light:" if notification.severity in ("critical", "high") else ":warning:"


def fallback_text(notification: Notification) -> str:
    """One line for push notifications and clients that cannot show blocks. Slack parses it
    as mrkdwn too, so the label values in the title are escaped like the blocks'."""
    return (f"[{notification.severity.upper()}] {_escape(notification.title)}: "
            f"{_escape(_state(notification))}")


def _state(notification: Notification) -> str:
    """The state in words, unescaped (the callers escape it for mrkdwn)."""
    if notification.action is Action.ACKNOWLEDGE and notification.firing:
        when = iso8601(notification.acked_at or notification.created_at)
        where = ACK_PLACES.get(notification.ack_source, "")
        text = f"Acknowledged by {notification.acked_by or 'someone'}{where} at {when}"
        note = ack_note(notification)
        return f"{text}: {note}" if note else text
    return status_line(notification)


def thread_reply(notification: Notification, *, escalated: bool) -> str:
    """The reply under the incident's message that records this notification."""
    when_ts = notification.created_at
    when = _date(when_ts)
    if notification.action is Action.RESOLVE or not notification.firing:
        return f":white_check_mark: Resolved {when}"
    if notification.action is Action.ACKNOWLEDGE:
        who = _escape(notification.acked_by or "someone")
        where = ACK_PLACES.get(notification.ack_source, "")
        note = ack_note(notification)
        return (f":eyes: Acknowledged by {who}{where} {_date(notification.acked_at or when_ts)}"
                + (f": {_escape(note)}" if note else ""))
    if escalated:
        return (f":arrow_double_up: Escalated to level {notification.level} {when}: "
                f"{status_line(notification)}, still unacknowledged")
    return f":repeat: Still firing {when}: {status_line(notification)}"


def blocks(notification: Notification, external_url: str = "", *,
           interactive: bool = False) -> list[dict[str, Any]]:
    """The Block Kit blocks of the incident's message."""
    alert = primary_alert(notification)
    result: list[dict[str, Any]] = [{
        "type": "header",
        "text": {"type": "plain_text", "emoji": True,
                 "text": truncate(f"{_emoji(notification)} {notification.title}",
                                  _HEADER_LIMIT)},
    }]
    about = [alert.annotations.get(k, "") for k in ("summary", "description")] if alert else []
    about_text = "\n".join(_escape(t) for t in about if t)
    if about_text:
        result.append(_section_text(about_text))
    result.append({"type": "section", "fields": _fields(notification)})
    alerts = ordered_alerts(notification)
    if len(alerts) > 1:
        lines = [f"• {a.status.value}: {_escape(_label_text(a.labels))}"
                 + (f" = {_escape(a.value)}" if a.value else "")
                 for a in alerts[:_LISTED_ALERTS]]
        if len(alerts) > _LISTED_ALERTS:
            lines.append(f"… and {len(alerts) - _LISTED_ALERTS} more")
        result.append(_section_text("\n".join(lines)))
    result.append({"type": "context", "elements": _context(notification)})
    buttons = _buttons(notification, external_url)
    actions: dict[str, Any] = {"type": "actions", "elements": buttons}
    if interactive and notification.action is not Action.RESOLVE and notification.firing:
        actions["elements"] = [*_action_buttons(notification), *buttons]
        # Names the receiver whose app handles the press (several may share a channel).
        actions["block_id"] = block_id(notification.receiver)
    if actions["elements"]:
        result.append(actions)
    return result


def _action_buttons(notification: Notification) -> list[dict[str, Any]]:
    """Acknowledge (until somebody did), Silence 1 h and Silence until resolved; the value
    is the incident key."""
    found: list[dict[str, Any]] = []
    if notification.action is not Action.ACKNOWLEDGE:
        found.append({"type": "button", "action_id": ACK_ACTION, "style": "primary",
                      "text": {"type": "plain_text", "text": "Acknowledge"},
                      "value": notification.incident})
    found += [{"type": "button", "action_id": action_id, "value": notification.incident,
               "text": {"type": "plain_text", "text": text}}
              for action_id, text in ((SILENCE_HOUR_ACTION, "Silence 1 h"),
                                      (SILENCE_RESOLVED_ACTION, "Silence until resolved"))]
    return found


def _section_text(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, _TEXT_LIMIT)}}


def _fields(notification: Notification) -> list[dict[str, str]]:
    alert = primary_alert(notification)
    labels: Mapping[str, str] = alert.labels if alert else notification.group_labels
    pairs = [("Status", _state(notification)), ("Severity", notification.severity)]
    if alert and alert.value:
        pairs.append(("Value", alert.value))
    threshold = pick(notification, THRESHOLD_KEYS)
    if threshold:
        pairs.append(("Threshold", threshold))
    target = labels.get("target") or notification.group_labels.get("target", "")
    if target:
        pairs.append(("Target", target))
    pairs.append(("Level", str(notification.level)))
    return [{"type": "mrkdwn", "text": truncate(f"*{name}*\n{_escape(value)}", _FIELD_LIMIT)}
            for name, value in pairs]


def _context(notification: Notification) -> list[dict[str, str]]:
    alert = primary_alert(notification)
    labels: Mapping[str, str] = alert.labels if alert else notification.group_labels
    label_text = "  ".join(f"`{_escape(k)}={_escape(v)}`" for k, v in sorted(labels.items()))
    times = [f"Started {_date(first_start(notification))}"]
    if notification.acked_by or notification.acked_at is not None:
        who = _escape(notification.acked_by or "someone")
        times.append(f"Acknowledged by {who} "
                     f"{_date(notification.acked_at or notification.created_at)}")
    if notification.action is Action.RESOLVE or not notification.firing:
        ends = [a.ends_at for a in notification.alerts if a.ends_at is not None]
        times.append(f"Resolved {_date(max(ends, default=notification.created_at))}")
    elements = [{"type": "mrkdwn", "text": " · ".join(times)}]
    if label_text:
        elements.insert(0, {"type": "mrkdwn", "text": truncate(label_text, _FIELD_LIMIT)})
    return elements


def _buttons(notification: Notification, external_url: str) -> list[dict[str, Any]]:
    candidates = [
        ("runbook", "Runbook", pick(notification, RUNBOOK_KEYS)),
        ("dashboard", "Dashboard", pick(notification, DASHBOARD_KEYS)),
        ("piggywatch", "PiggyWatch", notification.external_url or external_url),
    ]
    return [{"type": "button", "action_id": action_id,
             "text": {"type": "plain_text", "text": text}, "url": url}
            for action_id, text, url in candidates if is_http_url(url)]


def _label_text(labels: Mapping[str, str]) -> str:
    name = labels.get("alertname", "alert")
    rest = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
    return f"{name} {{{rest}}}" if rest else name


def _date(ts: float) -> str:
    """Shown in each reader's own time zone; the UTC time is the fallback."""
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{iso8601(ts)}>"


def _escape(text: str) -> str:
    # The three characters Slack's mrkdwn asks to escape; the rest is left as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
