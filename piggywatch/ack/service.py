"""Acknowledgements from where on-call already is: PagerDuty, Slack buttons, mail links.

Each hook checks who is talking (a signature, a signed token), then hands the change to the
incident desk (``alerting/incidents.py``) exactly as an API acknowledgement would go:
recorded with its source, the climb stopped, and the receivers told through the outbox
(the Slack message updated, PagerDuty's incident acknowledged under the same dedup_key, a
mail in the thread). Deliveries are remembered (``HookLedger``), so a redelivered webhook
or a second press changes nothing.

Slack must hear back within 3 seconds: a press is verified and queued, and answered at once;
a worker thread acts on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piggywatch.ack.ledger import HookLedger
from piggywatch.ack.links import LINK_ACTIONS, AckLinks, LinkClaim, LinkError
from piggywatch.ack.pagerduty_webhook import PagerDutyChange, WebhookError, parse_delivery
from piggywatch.ack.pagerduty_webhook import verify_signature as pagerduty_signed
from piggywatch.ack.slack_interactions import (
    ACK_ACTION,
    SILENCE_RESOLVED_ACTION,
    ButtonPress,
    InteractionError,
    presses,
    read_form,
    request_is_signed,
)
from piggywatch.alerting.channels.pagerduty import PagerDutyReceiver
from piggywatch.alerting.channels.slack import SlackReceiver
from piggywatch.alerting.settings import Receiver
from piggywatch.state import StateLike
from piggywatch.store.samples import MetricKind, MetricSpec, Sample, labels_of

if TYPE_CHECKING:
    import httpx

    from piggywatch.alerting.escalation import Escalation
    from piggywatch.alerting.incidents import Incidents

__all__ = ["SPECS", "STORE_KEY", "AckService", "HookAnswer", "silence_matchers"]

log = logging.getLogger(__name__)

STORE_KEY = "piggywatch/ack"
SPECS = (
    MetricSpec("piggywatch_hook_requests_total", MetricKind.COUNTER,
               "Requests to the acknowledgement hooks (pagerduty, slack, link) by outcome: "
               "applied, duplicate, ignored, unsigned, bad_signature, too_large, malformed"),
)
# A PagerDuty delivery or a Slack payload (the whole message included) is a few KB.
MAX_HOOK_BODY_BYTES = 256 * 1024
HOUR = 3600.0
# "Silence until resolved" ends with its incident, and at the latest after this.
UNTIL_RESOLVED_MAX_SECONDS = 7 * 86400.0
USER_GROUPS_CACHE_SECONDS = 300.0
_STATUS = {"incident.acknowledged": "acknowledged", "incident.unacknowledged": "triggered",
           "incident.resolved": "resolved"}


@dataclass(frozen=True)
class HookAnswer:
    """What a hook answers: status, body, content type."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: Mapping[str, Any]) -> HookAnswer:
        """A JSON answer."""
        return cls(status, json.dumps(data).encode())


class AckService:
    """The hooks' logic, shared by the HTTP endpoints, Socket Mode and the poller."""

    def __init__(self, incidents: Incidents, state: StateLike, receivers: Sequence[Receiver],
                 *, links: AckLinks | None = None, clock: Callable[[], float] = time.time,
                 http: httpx.Client | None = None) -> None:
        self._incidents = incidents
        self._clock = clock
        self.links = links
        self._http = http
        pagerduty = [(r.name, c) for r in receivers if (c := r.config_of(PagerDutyReceiver))]
        slack = [(r.name, s) for r in receivers if (s := r.config_of(SlackReceiver))]
        self._pagerduty_secrets = [secret.get_secret_value() for _, config in pagerduty
                                   for secret in config.webhook_secrets]
        self._slack: dict[str, SlackReceiver] = {
            name: config for name, config in slack if config.interactive}
        self._ledger = HookLedger(state)
        self._counts: dict[tuple[str, str], int] = {}
        self._count_lock = threading.Lock()
        self._presses: queue.Queue[ButtonPress | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        # Called after each press is handled (tests and the bench wait on it).
        self.on_press: Callable[[ButtonPress, str], None] | None = None
        incidents.on_ended.append(self._incidents_ended)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker that acts on button presses."""
        self._worker = threading.Thread(target=self._work, name="ack-hooks", daemon=True)
        self._worker.start()
        self._ledger.expire(self._clock())

    def stop(self) -> None:
        """Finish the presses queued, then stop."""
        if self._worker is not None:
            self._presses.put(None)
            self._worker.join(5.0)
            self._worker = None
        self._ledger.close()

    def samples(self, now: float) -> list[Sample]:
        """``piggywatch_hook_requests_total{hook,outcome}``."""
        with self._count_lock:
            counts = dict(self._counts)
        return [Sample("piggywatch_hook_requests_total", labels_of(hook=h, outcome=o), n, now)
                for (h, o), n in sorted(counts.items())]

    def _count(self, hook: str, outcome: str) -> None:
        with self._count_lock:
            self._counts[(hook, outcome)] = self._counts.get((hook, outcome), 0) + 1

    def _refuse(self, hook: str, outcome: str, status: int, why: str,
                peer: str = "") -> HookAnswer:
        # Logged without the body: a forged request's content is nobody's business.
        log.warning("%s hook refused a request%s (%s): %s", hook,
                    f" from {peer}" if peer else "", outcome, why)
        self._count(hook, outcome)
        return HookAnswer.json(status, {"status": "error", "error": why})

    # --- PagerDuty ----------------------------------------------------------------------

    def pagerduty_request(self, body: bytes, signature: str | None,
                          peer: str = "") -> HookAnswer:
        """``POST /hooks/pagerduty``: a v3 webhook delivery."""
        if not self._pagerduty_secrets:
            return self._refuse("pagerduty", "not_configured", 404, "no pagerduty receiver "
                                "has webhook_secrets", peer)
        if not signature:
            return self._refuse("pagerduty", "unsigned", 401,
                                "no X-PagerDuty-Signature header", peer)
        if not pagerduty_signed(body, signature, self._pagerduty_secrets):
            return self._refuse("pagerduty", "bad_signature", 401, "no signature matches a "
                                "configured webhook secret", peer)
        try:
            change = parse_delivery(body)
        except WebhookError as exc:
            return self._refuse("pagerduty", "malformed", exc.status, str(exc), peer)
        if change is None or not change.acts:
            self._count("pagerduty", "ignored")
            return HookAnswer.json(200, {"status": "ignored"})
        outcome = self.apply_pagerduty(change)
        return HookAnswer.json(200, {"status": outcome})

    def apply_pagerduty(self, change: PagerDutyChange) -> str:
        """Apply an incident change from PagerDuty once: ``applied``, ``duplicate``,
        ``stale`` (a later change was applied), ``unknown`` (no running incident) or
        ``ignored``."""
        if self._ledger.seen("pagerduty", change.event_id):
            self._count("pagerduty", "duplicate")
            return "duplicate"
        outcome = self._apply_pagerduty(change)
        self._ledger.remember("pagerduty", change.event_id, self._clock())
        self._count("pagerduty", outcome)
        return outcome

    def last_pagerduty_status(self, incident: str) -> str | None:
        """The PagerDuty status last applied to an incident (for the poller)."""
        found = self._ledger.external(incident, "pagerduty")
        return None if found is None else found[1]

    def _apply_pagerduty(self, change: PagerDutyChange) -> str:
        status = _STATUS.get(change.event_type)
        esc = self._incidents.incident(change.incident_key) if change.incident_key else None
        if status is None:
            return "ignored"
        if esc is None:
            log.info("PagerDuty %s for %s: no running incident has that key", change.event_type,
                     change.incident_key or "an incident without incident_key")
            return "unknown"
        if not self._ledger.advance(esc.incident, "pagerduty", change.incident_id, status,
                                    change.occurred_at):
            log.info("PagerDuty %s for incident %s ignored: a later change was applied",
                     change.event_type, esc.incident)
            return "stale"
        who = change.agent or "PagerDuty"
        ref = f" (PagerDuty incident #{change.number})" if change.number else ""
        if status == "acknowledged":
            self._incidents.acknowledge(esc.incident, who, f"acknowledged in PagerDuty{ref}",
                                         source="pagerduty", by_id=change.agent_id)
        elif status == "resolved":
            note = (f"resolved in PagerDuty by {who}{ref} while the alert still fires; "
                    "treated as acknowledged until it resolves")
            if self._incidents.ack_of(esc.incident) is None:
                self._incidents.acknowledge(esc.incident, who, note, source="pagerduty",
                                             by_id=change.agent_id)
            else:
                self._incidents.announce(esc.incident, note)
        else:
            self._incidents.withdraw_ack(esc.incident)
        return "applied"

    # --- Slack --------------------------------------------------------------------------

    def slack_request(self, body: bytes, headers: Mapping[str, str],
                      peer: str = "") -> HookAnswer:
        """``POST /hooks/slack/interactions`` (``headers`` with lower-case names): checked,
        queued, answered at once (Slack waits 3 s at most)."""
        secrets = {name: s.signing_secret.get_secret_value() for name, s in self._slack.items()
                   if s.signing_secret is not None}
        if not secrets:
            return self._refuse("slack", "not_configured", 404, "no slack receiver has "
                                "signing_secret", peer)
        if not headers.get("x-slack-signature") or not headers.get("x-slack-request-timestamp"):
            return self._refuse("slack", "unsigned", 401, "no X-Slack-Signature or "
                                "X-Slack-Request-Timestamp header", peer)
        signed_by = next((name for name, secret in secrets.items()
                          if request_is_signed(body, headers, secret, self._clock)), None)
        if signed_by is None:
            return self._refuse("slack", "bad_signature", 401, "the signature does not match "
                                "a signing secret, or the timestamp is over 5 minutes away",
                                peer)
        try:
            payload = read_form(body)
        except InteractionError as exc:
            return self._refuse("slack", "malformed", exc.status, str(exc), peer)
        self.slack_payload(payload, signed_by)
        return HookAnswer(200)

    def slack_payload(self, payload: Mapping[str, Any], receiver: str) -> int:
        """Queue the PiggyWatch button presses of a verified payload (from the request URL
        or Socket Mode); returns how many."""
        found = presses(payload)
        for press in found:
            if press.receiver not in self._slack:
                press = _with_receiver(press, receiver)
            self._presses.put(press)
        if not found:
            self._count("slack", "ignored")
        return len(found)

    def _work(self) -> None:
        while True:
            press = self._presses.get()
            if press is None:
                return
            try:
                outcome = self.handle_press(press)
            except Exception:
                log.exception("a Slack button press could not be handled")
                outcome = "failed"
            self._count("slack", outcome)
            callback = self.on_press
            if callback is not None:
                callback(press, outcome)

    def handle_press(self, press: ButtonPress) -> str:
        """Act on one press (on the worker thread): ``applied``, ``duplicate``, ``refused``,
        ``ended`` or ``already``."""
        settings = self._slack.get(press.receiver)
        if settings is None:
            return "ignored"
        event_id = f"{press.user_id}:{press.action_id}:{press.action_ts}:{press.incident}"
        if not self._ledger.remember("slack", event_id, self._clock()):
            return "duplicate"
        if not self._allowed(press.user_id, settings):
            self._respond(press, settings, {
                "response_type": "ephemeral", "replace_original": False,
                "text": "Sorry, you are not among the people allowed to acknowledge or silence "
                        "PiggyWatch incidents here (allowed_users)."})
            log.info("Slack: %s (%s) pressed %s but is not in allowed_users", press.who,
                     press.user_id, press.action_id)
            return "refused"
        esc = self._incidents.incident(press.incident)
        if esc is None:
            self._respond(press, settings, _ended_message(press.message))
            return "ended"
        if press.action_id == ACK_ACTION:
            result = self._incidents.acknowledge(esc.incident, press.who, source="slack",
                                                  by_id=press.user_id)
            if result is not None and not result.acks[0][1]:
                first = result.acks[0][0]
                self._respond(press, settings, {
                    "response_type": "ephemeral", "replace_original": False,
                    "text": f"Already acknowledged by {first.by} ({first.source})."})
                return "already"
            return "applied"
        until_resolved = press.action_id == SILENCE_RESOLVED_ACTION
        silence_id = self._silence(esc, press.who, "Slack", until_resolved)
        what = "until the incident resolves" if until_resolved else "for 1 hour"
        self._respond(press, settings, {
            "response_type": "ephemeral", "replace_original": False,
            "text": f"Silenced {what} (silence {silence_id}); matchers: "
                    + ", ".join(silence_matchers(esc))})
        return "applied"

    def _silence(self, esc: Escalation, who: str, where: str, until_resolved: bool) -> str:
        now = self._clock()
        ends_at = now + (UNTIL_RESOLVED_MAX_SECONDS if until_resolved else HOUR)
        silence = self._incidents.silences.create(
            silence_matchers(esc), ends_at=ends_at, now=now, created_by=who,
            comment=f"from {where}, incident {esc.incident}"
                    + (", until it resolves" if until_resolved else ""))
        if until_resolved:
            self._ledger.link_silence(silence.id, esc.incident)
        log.info("incident %s silenced by %s from %s until %s", esc.incident, who, where,
                 "it resolves" if until_resolved else "an hour from now")
        return silence.id

    def _incidents_ended(self, incidents: list[str]) -> None:
        now = self._clock()
        for silence_id in self._ledger.take_silences(incidents):
            with contextlib.suppress(KeyError):  # expired and purged already
                self._incidents.silences.expire(silence_id, now)

    def _allowed(self, user_id: str, settings: SlackReceiver) -> bool:
        if not settings.allowed_users or user_id in settings.allowed_users:
            return True
        groups = [g for g in settings.allowed_users if g.startswith("S")]
        return any(user_id in self._group_members(g, settings) for g in groups)

    def _group_members(self, group: str, settings: SlackReceiver) -> frozenset[str]:
        now = self._clock()
        cached = self._groups.get(group)
        if cached is not None and now - cached[0] < USER_GROUPS_CACHE_SECONDS:
            return cached[1]
        assert settings.token is not None  # SlackReceiver requires it with buttons
        from slack_sdk import WebClient
        from slack_sdk.errors import SlackClientError

        client = WebClient(token=settings.token.get_secret_value(), base_url=settings.base_url,
                           timeout=max(1, int(settings.timeout)))
        try:
            users = client.usergroups_users_list(usergroup=group).get("users") or []
        except (SlackClientError, OSError) as exc:
            log.warning("Slack: the members of user group %s could not be read (%s); its "
                        "members are refused until they can", group, type(exc).__name__)
            return cached[1] if cached else frozenset()
        members = frozenset(str(u) for u in users)
        self._groups[group] = (now, members)
        return members

    def _respond(self, press: ButtonPress, settings: SlackReceiver,
                 message: Mapping[str, Any]) -> None:
        """Answer through the press's response_url (an ephemeral note, or the message
        replaced); failures are logged, never raised."""
        if not press.response_url.startswith(("https://", "http://")):
            return
        from piggywatch.alerting.notifiers._common import http_client

        client = self._http or http_client()
        try:
            response = client.post(press.response_url, json=dict(message),
                                   timeout=settings.timeout)
            if response.status_code >= 300:
                log.warning("Slack response_url answered %d", response.status_code)
        except Exception as exc:  # httpx errors, and anything a proxy does
            log.warning("Slack response_url failed: %s", type(exc).__name__)

    # --- mail links ---------------------------------------------------------------------

    def link_claim(self, token: str) -> LinkClaim:
        """The claim of a link token; LinkError when it is not valid (or links are off)."""
        if self.links is None:
            raise LinkError("acknowledge links are not configured (ack_links)")
        return self.links.read(token)

    def link_act(self, claim: LinkClaim) -> str:
        """Carry out a link's action once; the sentence the page shows."""
        esc = self._incidents.incident(claim.incident)
        if esc is None:
            self._count("link", "ended")
            return "This incident has already ended; nothing was done."
        if not self._ledger.remember("email", claim.nonce, self._clock()):
            self._count("link", "duplicate")
            return "This link was used already; nothing more was done."
        if claim.action == "ack":
            result = self._incidents.acknowledge(esc.incident, claim.who, source="email",
                                                  by_id=claim.who)
            self._count("link", "applied")
            if result is not None and not result.acks[0][1]:
                first = result.acks[0][0]
                return f"It was already acknowledged by {first.by} ({first.source})."
            return f"Acknowledged by {claim.who}. The escalation stopped."
        silence_id = self._silence(esc, claim.who, "a mail link", until_resolved=False)
        self._count("link", "applied")
        return f"Silenced for 1 hour (silence {silence_id})."

    def incident_title(self, key: str) -> str:
        """The running incident's title for a page ('' when it ended)."""
        esc = self._incidents.incident(key)
        if esc is None:
            return ""
        names = sorted({a.name for a in esc.alerts}) or ["alert"]
        labels = ", ".join(f"{k}={v}" for k, v in sorted(esc.group_labels.items())
                           if k != "alertname")
        return f"{names[0]} ({labels})" if labels else names[0]

    @staticmethod
    def action_label(action: str) -> str:
        """The page's button text for an action."""
        return LINK_ACTIONS.get(action, action)


def silence_matchers(esc: Escalation) -> list[str]:
    """Matchers for an incident: its group labels (or, grouped by nothing, its first alert's
    labels), as equality matchers."""
    labels: Mapping[str, str] = esc.group_labels or (esc.alerts[0].labels if esc.alerts
                                                     else {})
    return [f'{name}="{_quote(value)}"' for name, value in sorted(labels.items())]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _with_receiver(press: ButtonPress, receiver: str) -> ButtonPress:
    from dataclasses import replace

    return replace(press, receiver=receiver)


def _ended_message(original: Mapping[str, Any]) -> dict[str, Any]:
    """The pressed message without its buttons, saying the incident ended."""
    note = {"type": "context", "elements": [{
        "type": "mrkdwn", "text": ":information_source: This incident already ended; the "
                                  "button did nothing."}]}
    attachments = []
    for attachment in original.get("attachments") or []:
        if isinstance(attachment, dict):
            blocks = [b for b in attachment.get("blocks") or []
                      if isinstance(b, dict) and b.get("type") != "actions"]
            attachments.append({k: v for k, v in attachment.items()
                                if k in ("color", "fallback")} | {"blocks": [*blocks, note]})
    message: dict[str, Any] = {"replace_original": True,
                               "text": str(original.get("text") or "Incident ended")}
    if attachments:
        message["attachments"] = attachments
    else:
        blocks = [b for b in original.get("blocks") or []
                  if isinstance(b, dict) and b.get("type") != "actions"]
        message["blocks"] = [*blocks, note]
    return message
