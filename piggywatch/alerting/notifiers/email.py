"""E-mail over SMTP: one thread per incident, plain text and HTML."""

from __future__ import annotations

import email.errors
import hashlib
import html
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING

from piggywatch.alerting.channels.email import EmailReceiver
from piggywatch.alerting.model import Action, AlertInfo, Delivery, Notification, Outcome
from piggywatch.alerting.notifiers._common import (
    ACK_PLACES,
    DASHBOARD_KEYS,
    RUNBOOK_KEYS,
    THRESHOLD_KEYS,
    ack_note,
    first_start,
    is_http_url,
    iso8601,
    ordered_alerts,
    pick,
    receipt_state,
    scrub,
    starts_over,
    status_line,
)

if TYPE_CHECKING:
    from piggywatch.ack.links import AckLinks

__all__ = ["EmailNotifier", "root_message_id"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Every line boundary str.splitlines knows: the email package refuses a header value with
# any of them (a CR/LF would start a new header: injection).
_LINE_BREAKS = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")


def header_text(value: str) -> str:
    """``value`` made fit for a header: each run of line breaks folded into one space."""
    return _LINE_BREAKS.sub(" ", value)


def root_message_id(notification: Notification, sender: str) -> str:
    """The Message-ID of the incident's first mail, which every later mail references.

    Deterministic, so a resend after a crash carries the same id and mail clients drop the
    duplicate; it includes the incident's start, because an incident that fires again
    after resolving must start a new thread, and some providers (Gmail) silently discard
    a second message with an id they have seen."""
    start = int(first_start(notification))
    return f"<{notification.incident}.{start}@{_domain(sender)}>"


def _follow_up_id(root: str, notification: Notification) -> str:
    local, _, domain = root.strip("<>").partition("@")
    suffix = notification.id if _SAFE_ID.match(notification.id) else (
        hashlib.sha256(notification.id.encode()).hexdigest()[:24])
    return f"<{local}.{suffix}@{domain}>"


def _domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    domain = address.rpartition("@")[2]
    return domain if domain and "@" in address else "piggywatch.invalid"


class EmailNotifier:
    """Sends a multipart/alternative mail per notification. The trigger opens the thread
    with a deterministic Message-ID; acknowledge, resolve and escalation mails get a fresh
    Message-ID, ``In-Reply-To`` and ``References`` pointing at it, and the same subject
    behind ``Re:``: Gmail threads only when the subject matches too, so the state is in
    the body, never in the subject. The receipt keeps the root id and subject.

    ``ssl_context`` lets tests and private relays trust their own CA; by default the
    system's trust store (which honours SSL_CERT_FILE) verifies the server."""

    def __init__(self, settings: EmailReceiver, *, external_url: str = "",
                 ssl_context: ssl.SSLContext | None = None,
                 ack_links: AckLinks | None = None) -> None:
        self._settings = settings
        self._external_url = external_url
        self._ack_links = ack_links
        self._ssl_context = ssl_context
        host, _, port = settings.smarthost.rpartition(":")
        self._host, self._port = host, int(port)

    def send(self, notification: Notification, receipt: Mapping[str, str]) -> Delivery:
        """Build and send the mail; 4xx replies and network errors are retried, a mail that
        cannot be built is refused for good at once (it would fail the same way forever)."""
        thread = self._thread(notification, receipt)
        try:
            message = self.message(notification, receipt)
            # Encoded here, before connecting, rather than by smtplib mid-session.
            message.as_bytes()
        except (ValueError, LookupError, email.errors.MessageError) as exc:
            # UnicodeEncodeError is a ValueError: a lone surrogate (half an emoji) in a
            # label or annotation has no UTF-8 encoding. Its message shows it escaped.
            return Delivery(Outcome.PERMANENT, detail=(
                f"the mail cannot be encoded ({type(exc).__name__}: {exc}); check the "
                "alert's labels and annotations"))
        failure = self._deliver(message)
        if failure is not None:
            return failure
        return Delivery(Outcome.ACCEPTED, detail=f"mailed to {len(self._settings.to)} "
                        f"recipient{'s' if len(self._settings.to) != 1 else ''}",
                        receipt={**thread, "state": receipt_state(notification)})

    def _thread(self, notification: Notification, receipt: Mapping[str, str]) -> dict[str, str]:
        """The thread's root Message-ID and subject: the receipt's, unless this notification
        opens a thread (the first trigger, or one after the incident resolved)."""
        if receipt.get("message_id") and not starts_over(notification, receipt):
            return {"message_id": receipt["message_id"],
                    "subject": header_text(receipt.get("subject") or _subject(notification))}
        return {"message_id": root_message_id(notification, self._settings.from_),
                "subject": _subject(notification)}

    def message(self, notification: Notification, receipt: Mapping[str, str]) -> EmailMessage:
        """The mail for ``notification``, threaded under ``receipt``'s root if it has one."""
        settings = self._settings
        thread = self._thread(notification, receipt)
        root, subject = thread["message_id"], thread["subject"]
        opens_thread = notification.action is Action.TRIGGER and (
            not receipt.get("message_id") or starts_over(notification, receipt))
        message = EmailMessage(policy=SMTP_POLICY)
        message["From"] = settings.from_
        message["To"] = ", ".join(settings.to)
        message["Subject"] = subject if opens_thread else f"Re: {subject}"
        message["Date"] = format_datetime(datetime.fromtimestamp(notification.created_at, UTC))
        if opens_thread:
            message["Message-ID"] = root
        else:
            message["Message-ID"] = _follow_up_id(root, notification)
            message["In-Reply-To"] = root
            message["References"] = root
        # Mark it as machine mail so auto-responders (out of office) stay quiet (RFC 3834).
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
        message["X-PiggyWatch-Incident"] = notification.incident
        message["X-PiggyWatch-Action"] = notification.action.value
        external_url = notification.external_url or self._external_url
        actions = self._actions(notification)
        message.set_content(_text_body(notification, external_url, actions))
        message.add_alternative(_html_body(notification, external_url, actions),
                                subtype="html")
        return message

    def _actions(self, notification: Notification) -> list[tuple[str, str]]:
        """Acknowledge and Silence links for a firing, unacknowledged incident's mail: each
        a signed token for this incident, this action and this mail's recipients."""
        links = self._ack_links
        if links is None or notification.action is not Action.TRIGGER or not notification.firing:
            return []
        who = ", ".join(self._settings.to)
        return [(label, links.url(notification.incident, action, notification.receiver, who))
                for action, label in (("ack", "Acknowledge"), ("silence_1h", "Silence 1 h"))]

    def _deliver(self, message: EmailMessage) -> Delivery | None:
        settings = self._settings
        secrets = (settings.password.get_secret_value(),) if settings.password else ()
        try:
            context = self._ssl_context
            if context is None and settings.tls != "none":
                context = ssl.create_default_context()
            smtp: smtplib.SMTP
            # gethostname, not smtplib's default getfqdn: a reverse lookup can hang for
            # seconds where DNS is poor, and the HELO name is informational.
            local = socket.gethostname()
            if settings.tls == "tls":
                smtp = smtplib.SMTP_SSL(self._host, self._port, local_hostname=local,
                                        timeout=settings.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self._host, self._port, local_hostname=local,
                                    timeout=settings.timeout)
            with smtp:
                if settings.tls == "starttls":
                    smtp.starttls(context=context)
                if settings.username:
                    password = settings.password.get_secret_value() if settings.password else ""
                    smtp.login(settings.username, password)
                refused = smtp.send_message(message, to_addrs=settings.to)
        except smtplib.SMTPRecipientsRefused as exc:
            return _refused(exc.recipients, secrets)
        except smtplib.SMTPResponseException as exc:
            return _reply(exc.smtp_code, exc.smtp_error, secrets)
        except smtplib.SMTPServerDisconnected as exc:
            return Delivery(Outcome.RETRY, detail=scrub(f"SMTP server disconnected: {exc}",
                                                        secrets))
        except smtplib.SMTPException as exc:
            # No STARTTLS, no AUTH, no usable mechanism: the relay and the configuration
            # disagree, and waiting will not change that.
            return Delivery(Outcome.PERMANENT, detail=scrub(f"SMTP: {exc}", secrets))
        except ssl.SSLCertVerificationError as exc:
            return Delivery(Outcome.PERMANENT, detail=scrub(
                f"SMTP server certificate not trusted: {exc.verify_message}", secrets))
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            return Delivery(Outcome.RETRY, detail=scrub(f"SMTP TLS cut short: {exc}", secrets))
        except ssl.SSLError as exc:
            # A handshake that fails outright is a TLS mismatch (tls vs starttls), not an outage.
            return Delivery(Outcome.PERMANENT, detail=scrub(f"SMTP TLS failed: {exc}", secrets))
        except OSError as exc:
            return Delivery(Outcome.RETRY, detail=scrub(
                f"SMTP {self._host}:{self._port} unreachable: {type(exc).__name__}: {exc}",
                secrets))
        if refused:
            # Some recipients got it: a retry would mail them twice. Say who was missed.
            return Delivery(Outcome.ACCEPTED, detail=scrub(
                f"refused by the relay: {', '.join(sorted(refused))}", secrets))
        return None


def _reply(code: int, text: bytes | str, secrets: tuple[str, ...]) -> Delivery:
    reply = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    detail = scrub(f"SMTP answered {code} {reply}", secrets)
    # 4xx is "try again later" in SMTP; 5xx is final.
    outcome = Outcome.PERMANENT if 500 <= code < 600 else Outcome.RETRY
    return Delivery(outcome, detail=detail)


def _refused(recipients: Mapping[str, tuple[int, bytes]], secrets: tuple[str, ...]) -> Delivery:
    codes = [code for code, _ in recipients.values()]
    outcome = Outcome.RETRY if any(400 <= c < 500 for c in codes) else Outcome.PERMANENT
    listed = "; ".join(f"{rcpt}: {code} {text.decode(errors='replace')}"
                       for rcpt, (code, text) in sorted(recipients.items()))
    return Delivery(outcome, detail=scrub(f"every recipient refused: {listed}", secrets))


def _subject(notification: Notification) -> str:
    return header_text(f"[{notification.severity.upper()}] {notification.title}")


def _headline(notification: Notification) -> str:
    if notification.action is Action.ACKNOWLEDGE and notification.firing:
        when = iso8601(notification.acked_at or notification.created_at)
        where = ACK_PLACES.get(notification.ack_source, "")
        text = f"Acknowledged by {notification.acked_by or 'someone'}{where} at {when}"
        note = ack_note(notification)
        return f"{text}: {note}" if note else text
    if notification.action is Action.RESOLVE or not notification.firing:
        return "Resolved"
    if notification.level > 1:
        return f"{status_line(notification)}, escalation level {notification.level}"
    return status_line(notification)


def _alert_rows(alert: AlertInfo) -> list[tuple[str, str]]:
    rows = [("Status", alert.status.value)]
    for key, name in (("summary", "Summary"), ("description", "Description")):
        if alert.annotations.get(key):
            rows.append((name, alert.annotations[key]))
    if alert.value:
        rows.append(("Value", alert.value))
    rows.append(("Started", iso8601(alert.starts_at)))
    if alert.ends_at is not None:
        rows.append(("Ended", iso8601(alert.ends_at)))
    rows.append(("Labels", ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))))
    return rows


def _links(notification: Notification, external_url: str) -> list[tuple[str, str]]:
    candidates = [("Runbook", pick(notification, RUNBOOK_KEYS)),
                  ("Dashboard", pick(notification, DASHBOARD_KEYS)),
                  ("PiggyWatch", external_url)]
    return [(name, url) for name, url in candidates if is_http_url(url)]


def _text_body(notification: Notification, external_url: str,
               actions: Sequence[tuple[str, str]] = ()) -> str:
    lines = [_subject(notification), _headline(notification), ""]
    if actions:
        lines += [f"{name}: {url}" for name, url in actions]
        lines.append("")
    threshold = pick(notification, THRESHOLD_KEYS)
    if threshold:
        lines += [f"Threshold: {threshold}", ""]
    for alert in ordered_alerts(notification):
        lines.append(alert.name or "alert")
        lines += [f"  {name}: {value}" for name, value in _alert_rows(alert)]
        lines.append("")
    lines += [f"{name}: {url}" for name, url in _links(notification, external_url)]
    lines += ["", f"Incident {notification.incident}, severity {notification.severity}, "
              f"level {notification.level}."]
    return "\n".join(lines).strip() + "\n"


def _html_body(notification: Notification, external_url: str,
               actions: Sequence[tuple[str, str]] = ()) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><body style="font-family: sans-serif">',
        f"<h2>{e(_subject(notification))}</h2>",
        f"<p><strong>{e(_headline(notification))}</strong></p>",
    ]
    if actions:
        parts.append("<p>" + " · ".join(f'<a href="{e(url, quote=True)}"><strong>{e(name)}'
                                        "</strong></a>" for name, url in actions) + "</p>")
    threshold = pick(notification, THRESHOLD_KEYS)
    if threshold:
        parts.append(f"<p>Threshold: {e(threshold)}</p>")
    for alert in ordered_alerts(notification):
        parts.append(f"<h3>{e(alert.name or 'alert')}</h3>")
        parts.append('<table cellpadding="4">')
        parts += [f'<tr><th align="left">{e(name)}</th><td>{e(value)}</td></tr>'
                  for name, value in _alert_rows(alert)]
        parts.append("</table>")
    links = _links(notification, external_url)
    if links:
        parts.append("<p>" + " · ".join(f'<a href="{e(url, quote=True)}">{e(name)}</a>'
                                        for name, url in links) + "</p>")
    parts.append(f"<p><small>Incident {e(notification.incident)}, severity "
                 f"{e(notification.severity)}, level {notification.level}.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
