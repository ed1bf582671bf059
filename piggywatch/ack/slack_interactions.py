"""Slack interactivity: the request check and the button presses a payload carries.

Slack posts ``payload=<JSON>`` form-encoded to the app's request URL, signed with the app's
signing secret (``X-Slack-Signature: v0=<hex>`` over ``v0:<timestamp>:<body>``); slack-sdk's
SignatureVerifier checks it and refuses a timestamp more than five minutes away. Socket Mode
delivers the same payload inside an envelope instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

__all__ = ["ACK_ACTION", "ACTIONS", "SILENCE_HOUR_ACTION", "SILENCE_RESOLVED_ACTION",
           "ButtonPress", "InteractionError", "block_id", "presses", "read_form",
           "request_is_signed"]

ACK_ACTION = "piggywatch_ack"
SILENCE_HOUR_ACTION = "piggywatch_silence_1h"
SILENCE_RESOLVED_ACTION = "piggywatch_silence_resolved"
ACTIONS = frozenset({ACK_ACTION, SILENCE_HOUR_ACTION, SILENCE_RESOLVED_ACTION})
_BLOCK_PREFIX = "piggywatch:"


class InteractionError(ValueError):
    """A request that cannot be read: the HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def block_id(receiver: str) -> str:
    """The block id of the buttons: which receiver's message they are on."""
    return _BLOCK_PREFIX + receiver


def request_is_signed(body: bytes, headers: Mapping[str, str], signing_secret: str,
                      clock: Callable[[], float] | None = None) -> bool:
    """Whether Slack signed this request with ``signing_secret`` within five minutes
    (``headers`` with lower-case names)."""
    from slack_sdk.signature import Clock, SignatureVerifier

    class _Clock(Clock):
        def now(self) -> float:
            return clock() if clock is not None else super().now()

    verifier = SignatureVerifier(signing_secret, clock=_Clock())
    timestamp = headers.get("x-slack-request-timestamp")
    signature = headers.get("x-slack-signature")
    if not timestamp or not signature:
        return False
    try:
        return verifier.is_valid(body, timestamp, signature)
    except ValueError:  # a timestamp that is not a number
        return False


def read_form(body: bytes) -> dict[str, Any]:
    """The ``payload`` JSON of a form-encoded interactivity request."""
    try:
        form = parse_qs(body.decode(), strict_parsing=False)
    except UnicodeDecodeError:
        raise InteractionError(400, "the body is not form-encoded text") from None
    values = form.get("payload")
    if not values:
        raise InteractionError(400, "the form has no payload field")
    try:
        payload = json.loads(values[0])
    except (ValueError, RecursionError):
        raise InteractionError(400, "the payload is not JSON") from None
    if not isinstance(payload, dict):
        raise InteractionError(400, "the payload is not a JSON object")
    return payload


@dataclass(frozen=True)
class ButtonPress:
    """One press of a PiggyWatch button."""

    action_id: str
    incident: str
    receiver: str
    user_id: str
    user_name: str
    action_ts: str
    response_url: str = ""
    channel_id: str = ""
    message_ts: str = ""
    team_id: str = ""
    message: Mapping[str, Any] = field(default_factory=dict)

    @property
    def who(self) -> str:
        """The presser as the acknowledgement names them."""
        return f"@{self.user_name}" if self.user_name else self.user_id


def presses(payload: Mapping[str, Any]) -> list[ButtonPress]:
    """The PiggyWatch button presses of a ``block_actions`` payload (others: none)."""
    if payload.get("type") != "block_actions":
        return []
    user = _dict(payload.get("user"))
    container = _dict(payload.get("container"))
    channel = _dict(payload.get("channel"))
    found = []
    for action in payload.get("actions") or []:
        if not isinstance(action, dict) or action.get("action_id") not in ACTIONS:
            continue
        block = str(action.get("block_id") or "")
        found.append(ButtonPress(
            action_id=str(action["action_id"]), incident=str(action.get("value") or ""),
            receiver=block[len(_BLOCK_PREFIX):] if block.startswith(_BLOCK_PREFIX) else "",
            user_id=str(user.get("id") or ""),
            user_name=str(user.get("username") or user.get("name") or ""),
            action_ts=str(action.get("action_ts") or ""),
            response_url=str(payload.get("response_url") or ""),
            channel_id=str(container.get("channel_id") or channel.get("id") or ""),
            message_ts=str(container.get("message_ts") or ""),
            team_id=str(user.get("team_id") or _dict(payload.get("team")).get("id") or ""),
            message=_dict(payload.get("message"))))
    return found


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
