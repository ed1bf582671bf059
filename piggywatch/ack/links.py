"""Acknowledge and silence links for mails: signed, expiring, one incident, one action.

A token names the incident, the action, the receiver and the recipients the mail went to,
and is signed with ``ack_links.secret`` (itsdangerous, HMAC-SHA1 over a timestamped
payload); it carries no API token. Opening the link shows a page; only its POST acts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["LINK_ACTIONS", "AckLinks", "LinkClaim", "LinkError"]

# action → what the page's button says
LINK_ACTIONS = {"ack": "Acknowledge", "silence_1h": "Silence for 1 hour"}
_SALT = "piggywatch-ack-link"


class LinkError(ValueError):
    """A token that is not ours, altered, or expired."""


@dataclass(frozen=True)
class LinkClaim:
    """What a valid token allows."""

    incident: str
    action: str
    receiver: str
    who: str
    nonce: str
    issued_at: float


class AckLinks:
    """Makes and reads link tokens."""

    def __init__(self, secret: str, ttl: float, external_url: str) -> None:
        from itsdangerous import URLSafeTimedSerializer

        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.ttl = ttl
        self.external_url = external_url.rstrip("/")

    def token(self, incident: str, action: str, receiver: str, who: str) -> str:
        """A token for one action on one incident, for the mail to ``who``."""
        if action not in LINK_ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        return str(self._serializer.dumps({"i": incident, "a": action, "r": receiver,
                                           "w": who, "n": secrets.token_urlsafe(9)}))

    def url(self, incident: str, action: str, receiver: str, who: str) -> str:
        """The link: ``{external_url}/ack/{token}``."""
        return f"{self.external_url}/ack/{self.token(incident, action, receiver, who)}"

    def read(self, token: str, now: float | None = None) -> LinkClaim:
        """The claim of a valid token; LinkError saying why one is not."""
        from itsdangerous import BadSignature, SignatureExpired

        try:
            data, issued = self._serializer.loads(token, max_age=int(self.ttl),
                                                  return_timestamp=True)
        except SignatureExpired:
            raise LinkError(f"this link expired (links are valid for {_hours(self.ttl)}); "
                            "acknowledge in Slack, PagerDuty or with piggywatch ack") from None
        except BadSignature:
            raise LinkError("this link is not valid (altered, cut short, or signed with "
                            "another secret)") from None
        if not _claim_shape(data):
            raise LinkError("this link is not valid")
        return LinkClaim(data["i"], data["a"], data["r"], data["w"], data["n"],
                         issued.timestamp())


def _claim_shape(data: Any) -> bool:
    return (isinstance(data, dict) and all(isinstance(data.get(k), str) for k in "iarwn")
            and data["a"] in LINK_ACTIONS)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:g} hours" if hours != 1 else "1 hour"
