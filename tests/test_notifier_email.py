"""EmailNotifier against a real SMTP server (aiosmtpd): MIME structure, threading headers,
TLS, AUTH and the classification of every SMTP failure."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from piggywatch.alerting.channels.email import EmailReceiver
from piggywatch.alerting.model import Action, Outcome
from piggywatch.alerting.notifiers.email import EmailNotifier
from tests.notification_samples import T0, alert, notification, resolved
from tests.support.ports import free_port

pytest.importorskip("aiosmtpd")

from tests.support.servers.smtp import SMTPServer
from tests.support.servers.tls import (
    SelfSignedCertificate,
    cryptography_available,
    make_certificate,
)

SENDER = "PiggyWatch <piggywatch@example.com>"
PASSWORD = "s3cret-smtp-password"
needs_tls = pytest.mark.skipif(not cryptography_available(),
                               reason="the cryptography package makes the test certificate")


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def certificate(tmp_path: Path) -> SelfSignedCertificate:
    if not cryptography_available():
        pytest.skip("the cryptography package makes the test certificate")
    return make_certificate(tmp_path / "tls")


def settings(smarthost: str, **extra: Any) -> EmailReceiver:
    config = {"to": ["oncall@example.com", "lead@example.com"], "from": SENDER,
              "smarthost": smarthost, "tls": "none", "timeout": 5, **extra}
    return EmailReceiver.model_validate(config)


def mailer(smarthost: str, **extra: Any) -> EmailNotifier:
    return EmailNotifier(settings(smarthost, **extra))


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    # The wire has CRLF line ends, as SMTP requires.
    return (str(text.get_content()).replace("\r\n", "\n"),
            str(html.get_content()).replace("\r\n", "\n"))


def test_trigger_opens_a_thread_with_text_and_html(smtp: SMTPServer) -> None:
    n = notification()
    root = f"<{n.incident}.1767225600@example.com>"

    delivery = mailer(smtp.smarthost).send(n, {})

    assert delivery.outcome is Outcome.ACCEPTED
    assert delivery.receipt == {"message_id": root, "state": "open",
                                "subject": "[HIGH] PostgresConnectionsHigh (target=main)"}
    [mail] = smtp.mails
    assert mail.mail_from == "piggywatch@example.com"
    assert mail.rcpt_tos == ("oncall@example.com", "lead@example.com")
    message = mail.message
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["From"] == SENDER
    assert message["To"] == "oncall@example.com, lead@example.com"
    assert message["Subject"] == "[HIGH] PostgresConnectionsHigh (target=main)"
    assert message["Message-ID"] == root
    assert message["In-Reply-To"] is None and message["References"] is None
    assert message["Date"] == "Thu, 01 Jan 2026 00:05:00 +0000"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-PiggyWatch-Incident"] == n.incident
    text, html = parts(message)
    assert text == (
        "[HIGH] PostgresConnectionsHigh (target=main)\n"
        "Firing (1 alert)\n"
        "\n"
        "PostgresConnectionsHigh\n"
        "  Status: firing\n"
        "  Summary: main: 85% of usable connections in use\n"
        "  Description: Client connections are above 80% of max_connections.\n"
        "  Value: 0.85\n"
        "  Started: 2026-01-01T00:00:00.000Z\n"
        "  Labels: alertname=PostgresConnectionsHigh, severity=high, target=main\n"
        "\n"
        "Runbook: https://runbooks.example.com/postgres#connectionshigh\n"
        "PiggyWatch: https://piggywatch.example.com\n"
        "\n"
        f"Incident {n.incident}, severity high, level 1.\n"
    )
    assert "<h2>[HIGH] PostgresConnectionsHigh (target=main)</h2>" in html
    assert '<a href="https://runbooks.example.com/postgres#connectionshigh">Runbook</a>' in html


def test_acknowledge_resolve_and_escalation_reply_to_the_root(smtp: SMTPServer) -> None:
    email = mailer(smtp.smarthost)
    firing = alert()
    receipt = email.send(notification(firing), {}).receipt
    root = receipt["message_id"]

    email.send(notification(firing, action=Action.ACKNOWLEDGE, acked_by="alice",
                            acked_at=T0 + 600, id="n-2"), receipt)
    email.send(notification(firing, level=2, id="n-3"), receipt)
    last = email.send(notification(resolved(firing), action=Action.RESOLVE, id="n-4"), receipt)

    assert last.receipt == {**receipt, "state": "resolved"}
    follow_ups = [m.message for m in smtp.mails[1:]]
    local = root.strip("<>").split("@")[0]
    assert [m["Message-ID"] for m in follow_ups] == [
        f"<{local}.n-2@example.com>", f"<{local}.n-3@example.com>",
        f"<{local}.n-4@example.com>"]
    for message in follow_ups:
        assert message["Subject"] == "Re: [HIGH] PostgresConnectionsHigh (target=main)"
        assert message["In-Reply-To"] == root
        assert message["References"] == root
    headlines = [parts(m)[0].splitlines()[1] for m in follow_ups]
    assert headlines == ["Acknowledged by alice at 2026-01-01T00:10:00.000Z",
                         "Firing (1 alert), escalation level 2",
                         "Resolved"]
    assert [m["X-PiggyWatch-Action"] for m in follow_ups] == [
        "acknowledge", "trigger", "resolve"]


def test_the_subject_stays_when_the_severity_rises(smtp: SMTPServer) -> None:
    email = mailer(smtp.smarthost)
    receipt = email.send(notification(alert(severity="medium")), {}).receipt

    email.send(notification(alert(severity="medium"), alert("PostgresConnectionsCritical",
                                                            severity="critical"), id="n-2"),
               receipt)

    assert smtp.mails[1].message["Subject"] == "Re: [MEDIUM] PostgresConnectionsHigh (target=main)"


def test_firing_again_after_resolving_starts_a_new_thread(smtp: SMTPServer) -> None:
    email = mailer(smtp.smarthost)
    firing = alert(starts_at=T0)
    first = email.send(notification(firing), {}).receipt
    done = email.send(notification(resolved(firing), action=Action.RESOLVE, id="n-2"),
                      first).receipt

    again = email.send(notification(alert(starts_at=T0 + 7200), id="n-3"), done).receipt

    assert again["message_id"] != first["message_id"]
    reopened = smtp.mails[2].message
    assert reopened["Message-ID"] == again["message_id"]
    assert reopened["Subject"] == "[HIGH] PostgresConnectionsHigh (target=main)"
    assert reopened["In-Reply-To"] is None


def test_html_is_escaped_and_only_http_links_are_links(smtp: SMTPServer) -> None:
    sneaky = alert(annotations={"summary": "<script>alert('x')</script> & more",
                                "runbook": "javascript:alert(1)"})

    mailer(smtp.smarthost).send(notification(sneaky), {})

    text, html = parts(smtp.mails[0].message)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "javascript:" not in html
    assert "Summary: <script>alert('x')</script> & more" in text


@needs_tls
def test_starttls_with_auth(certificate: SelfSignedCertificate) -> None:
    with SMTPServer(tls="starttls", certificate=certificate,
                    auth=("piggywatch", PASSWORD)) as smtp:
        email = EmailNotifier(settings(smtp.smarthost, tls="starttls", username="piggywatch",
                                       password=PASSWORD),
                              ssl_context=certificate.client_context())

        delivery = email.send(notification(), {})

        assert delivery.outcome is Outcome.ACCEPTED
        [mail] = smtp.mails
        assert (mail.tls, mail.login) == (True, "piggywatch")


@needs_tls
def test_implicit_tls(certificate: SelfSignedCertificate) -> None:
    with SMTPServer(tls="tls", certificate=certificate) as smtp:
        email = EmailNotifier(settings(smtp.smarthost, tls="tls"),
                              ssl_context=certificate.client_context())

        assert email.send(notification(), {}).outcome is Outcome.ACCEPTED
        assert smtp.mails[0].tls is True


@needs_tls
def test_an_untrusted_certificate_is_permanent(certificate: SelfSignedCertificate) -> None:
    with SMTPServer(tls="starttls", certificate=certificate) as smtp:
        delivery = mailer(smtp.smarthost, tls="starttls").send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "not trusted" in delivery.detail


@needs_tls
def test_a_wrong_password_is_permanent_and_never_shown(
        certificate: SelfSignedCertificate) -> None:
    with SMTPServer(tls="starttls", certificate=certificate,
                    auth=("piggywatch", "the-right-one")) as smtp:
        email = EmailNotifier(settings(smtp.smarthost, tls="starttls", username="piggywatch",
                                       password=PASSWORD),
                              ssl_context=certificate.client_context())
        delivery = email.send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "535" in delivery.detail
    assert PASSWORD not in delivery.detail


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_auth_over_plain_smtp() -> None:
    with SMTPServer(auth=("piggywatch", PASSWORD)) as server:
        email = mailer(server.smarthost, username="piggywatch", password=PASSWORD)

        assert email.send(notification(), {}).outcome is Outcome.ACCEPTED
        assert server.mails[0].login == "piggywatch"


def test_starttls_against_a_server_without_it_is_permanent(smtp: SMTPServer) -> None:
    delivery = mailer(smtp.smarthost, tls="starttls").send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert "STARTTLS" in delivery.detail


def test_implicit_tls_against_a_plain_server_is_permanent(smtp: SMTPServer) -> None:
    delivery = mailer(smtp.smarthost, tls="tls").send(notification(), {})

    assert delivery.outcome is Outcome.PERMANENT
    assert smtp.mails == []


@pytest.mark.parametrize(("stage", "reply", "outcome"), [
    ("DATA", "451 4.3.0 Try again later", Outcome.RETRY),
    ("DATA", "554 5.7.1 Message rejected as spam", Outcome.PERMANENT),
    ("MAIL", "421 4.7.0 Too many connections", Outcome.RETRY),
    ("MAIL", "550 5.7.1 Sender not allowed", Outcome.PERMANENT),
])
def test_smtp_replies_decide_retry_or_permanent(smtp: SMTPServer, stage: Any, reply: str,
                                                outcome: Outcome) -> None:
    smtp.reply_next(stage, reply)

    delivery = mailer(smtp.smarthost).send(notification(), {})

    assert delivery.outcome is outcome
    assert reply.split()[0] in delivery.detail


@pytest.mark.parametrize(("reply", "outcome"), [
    ("450 4.2.1 Mailbox busy", Outcome.RETRY),
    ("550 5.1.1 No such user", Outcome.PERMANENT),
])
def test_every_recipient_refused(smtp: SMTPServer, reply: str, outcome: Outcome) -> None:
    smtp.reply_next("RCPT", reply, times=2)

    delivery = mailer(smtp.smarthost).send(notification(), {})

    assert delivery.outcome is outcome
    assert "oncall@example.com" in delivery.detail


def test_some_recipients_refused_is_accepted_and_says_who(smtp: SMTPServer) -> None:
    smtp.reply_next("RCPT", "550 5.1.1 No such user")

    delivery = mailer(smtp.smarthost).send(notification(), {})

    # Retrying would mail the recipient who got it a second time.
    assert delivery.outcome is Outcome.ACCEPTED
    assert "oncall@example.com" in delivery.detail
    assert smtp.mails[0].rcpt_tos == ("lead@example.com",)


def test_a_refused_connection_is_retried() -> None:
    delivery = mailer(f"127.0.0.1:{free_port()}").send(notification(), {})

    assert delivery.outcome is Outcome.RETRY


def test_a_server_that_never_greets_times_out_and_is_retried() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()

        delivery = mailer(f"{host}:{port}", timeout=0.5).send(notification(), {})

    assert delivery.outcome is Outcome.RETRY
    assert "timed out" in delivery.detail


def test_a_server_that_hangs_up_is_retried() -> None:
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen()
        host, port = rude.getsockname()

        def hang_up() -> None:
            connection, _ = rude.accept()
            connection.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        delivery = mailer(f"{host}:{port}").send(notification(), {})
        thread.join()

    assert delivery.outcome is Outcome.RETRY


def test_label_values_with_markup_are_escaped_in_html_and_plain_elsewhere(
        smtp: SMTPServer) -> None:
    hostile = alert(target="<!channel>", extra_labels={"link": "<https://x|y>",
                                                       "html": "<script>"})

    delivery = mailer(smtp.smarthost).send(notification(hostile), {})

    assert delivery.outcome is Outcome.ACCEPTED
    message = smtp.mails[0].message
    assert message["Subject"] == "[HIGH] PostgresConnectionsHigh (target=<!channel>)"
    text, html = parts(message)
    labels = "alertname=PostgresConnectionsHigh, html={}, link={}, severity=high, target={}"
    assert f"  Labels: {labels.format('<script>', '<https://x|y>', '<!channel>')}\n" in text
    assert ('<tr><th align="left">Labels</th><td>' + labels.format(
        "&lt;script&gt;", "&lt;https://x|y&gt;", "&lt;!channel&gt;") + "</td></tr>") in html
    assert "<h2>[HIGH] PostgresConnectionsHigh (target=&lt;!channel&gt;)</h2>" in html
    for raw in ("<script>", "<!channel>", "<https://x|y>"):
        assert raw not in html
