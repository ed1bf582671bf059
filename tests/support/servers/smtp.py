"""An SMTP server (aiosmtpd) on a free loopback port: plain, STARTTLS or implicit TLS,
optionally with AUTH; it keeps every mail and can be scripted to refuse."""

from __future__ import annotations

import email
import email.policy
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.ports import start_on_free_port
from tests.support.servers.tls import SelfSignedCertificate

Stage = Literal["MAIL", "RCPT", "DATA"]


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted mail: the envelope, the raw bytes and how the session looked."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        """The mail parsed with the modern e-mail API."""
        return email.message_from_bytes(self.data, policy=email.policy.default)


class _Handler:
    def __init__(self, owner: SMTPServer) -> None:
        self.owner = owner

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        scripted = self.owner._scripted("MAIL")
        if scripted:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        scripted = self.owner._scripted("RCPT")
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        scripted = self.owner._scripted("DATA")
        if scripted:
            return scripted
        login = session.auth_data if session.authenticated else None
        self.owner._keep(ReceivedMail(
            mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content),
            tls=server.transport.get_extra_info("ssl_object") is not None,
            login=login.decode() if isinstance(login, bytes) else login))
        return "250 Message accepted for delivery"


class SMTPServer:
    """``tls``: ``none``, ``starttls`` (required before MAIL) or ``tls`` (implicit);
    the last two need ``certificate``. With ``auth=(user, password)`` AUTH is required
    and other credentials get 535."""

    def __init__(self, *, tls: Literal["none", "starttls", "tls"] = "none",
                 certificate: SelfSignedCertificate | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        if tls != "none" and certificate is None:
            raise ValueError("TLS needs a certificate (tests.support.servers.tls.make_certificate)")
        self.tls = tls
        self.certificate = certificate
        self.auth = auth
        self.host = "127.0.0.1"
        self.port = 0
        self._controller: Controller | None = None
        self._lock = threading.Lock()
        self._mails: list[ReceivedMail] = []
        self._script: dict[str, deque[str]] = {"MAIL": deque(), "RCPT": deque(),
                                               "DATA": deque()}

    def start(self) -> Self:
        """Listen on a free port (aiosmtpd's Controller cannot start on port 0: its readiness
        check connects to the configured port), another one if that port was taken."""
        start_on_free_port(self._start_on)
        return self

    def _start_on(self, port: int) -> None:
        self.port = port
        kwargs: dict[str, Any] = {}
        if self.certificate is not None and self.tls == "starttls":
            kwargs.update(tls_context=self.certificate.server_context(), require_starttls=True)
        if self.certificate is not None and self.tls == "tls":
            kwargs["ssl_context"] = self.certificate.server_context()
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.tls != "none")
        controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def smarthost(self) -> str:
        """``host:port``, as the email receiver's ``smarthost`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def mails(self) -> list[ReceivedMail]:
        """Every accepted mail, in order."""
        with self._lock:
            return list(self._mails)

    def reply_next(self, stage: Stage, reply: str, *, times: int = 1) -> None:
        """Answer the next ``times`` MAIL, RCPT (once per recipient) or DATA commands with
        ``reply`` (e.g. ``"451 4.3.0 Try again later"``) instead of accepting."""
        with self._lock:
            self._script[stage].extend([reply] * times)

    def _scripted(self, stage: Stage) -> str | None:
        with self._lock:
            queue = self._script[stage]
            return queue.popleft() if queue else None

    def _keep(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._mails.append(mail)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        assert self.auth is not None
        if isinstance(auth_data, LoginPassword):
            user, password = auth_data.login.decode(), auth_data.password.decode()
            if (user, password) == self.auth:
                return AuthResult(success=True, auth_data=auth_data.login)  # who logged in
        return AuthResult(success=False, handled=False)
